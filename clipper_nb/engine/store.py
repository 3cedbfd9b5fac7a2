"""Durable state under one state directory: SQLite for specs, files for artifacts.

::

    <state_dir>/clipper.sqlite3              apps, models, versions, selection state
    <state_dir>/models/<name>/<version>/     model.pkl + meta.json (what workers load)
    <state_dir>/logs/                        one log per replica (worker stdout/stderr)

Every method is blocking; the engine calls them through its one-thread executor so
that SQLite and file writes never run on the serving event loop. Transactions are
short (one statement or one small group).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import threading
from typing import Any

from clipper_nb.errors import BadInput

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL, version TEXT NOT NULL, spec TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS selection (
    app TEXT NOT NULL, context TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (app, context));
"""

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def check_name(kind: str, name: str) -> str:
    """Names become URL segments and folder names: keep them plain."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise BadInput(f"invalid {kind} name {name!r}",
                       "use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
    return name


class Store:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = os.path.abspath(state_dir)
        os.makedirs(os.path.join(self.state_dir, "models"), exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(os.path.join(self.state_dir, "clipper.sqlite3"), check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    @property
    def log_dir(self) -> str:
        return os.path.join(self.state_dir, "logs")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ reading
    def load(self) -> dict[str, Any]:
        """Everything: ``{"apps": [...], "models": [...], "versions": [...], "selection": [...]}``."""
        return {
            "apps": [json.loads(s) for (s,) in self._exec("SELECT spec FROM apps ORDER BY name")],
            "models": [json.loads(s) for (s,) in self._exec("SELECT spec FROM models ORDER BY name")],
            "versions": [json.loads(s) for (s,) in self._exec("SELECT spec FROM versions ORDER BY model, created")],
            "selection": [(a, c, json.loads(s)) for a, c, s in self._exec("SELECT app, context, state FROM selection")],
        }

    # ------------------------------------------------------------------ writing
    def save_app(self, spec: dict) -> None:
        self._exec("INSERT OR REPLACE INTO apps (name, spec) VALUES (?, ?)", (spec["name"], json.dumps(spec)))

    def delete_app(self, name: str) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM apps WHERE name = ?", (name,))
            self._db.execute("DELETE FROM selection WHERE app = ?", (name,))
            self._db.execute("COMMIT")

    def save_model(self, spec: dict) -> None:
        self._exec("INSERT OR REPLACE INTO models (name, spec) VALUES (?, ?)", (spec["name"], json.dumps(spec)))

    def save_version(self, spec: dict) -> None:
        self._exec("INSERT OR REPLACE INTO versions (model, version, spec, created) VALUES (?, ?, ?, ?)",
                   (spec["model"], spec["version"], json.dumps(spec), spec["created"]))

    def delete_version(self, model: str, version: str) -> None:
        self._exec("DELETE FROM versions WHERE model = ? AND version = ?", (model, version))
        shutil.rmtree(self.artifact_dir(model, version), ignore_errors=True)

    def delete_model(self, name: str) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM models WHERE name = ?", (name,))
            self._db.execute("DELETE FROM versions WHERE model = ?", (name,))
            self._db.execute("COMMIT")
        shutil.rmtree(os.path.join(self.state_dir, "models", name), ignore_errors=True)

    def save_selection(self, rows: list[tuple[str, str, dict]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO selection (app, context, state) VALUES (?, ?, ?)",
                                 [(a, c, json.dumps(s)) for a, c, s in rows])
            self._db.execute("COMMIT")

    def delete_selection(self, app: str) -> None:
        self._exec("DELETE FROM selection WHERE app = ?", (app,))

    def delete_contexts(self, app: str, contexts: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM selection WHERE app = ? AND context = ?", [(app, c) for c in contexts])

    # ------------------------------------------------------------------ artifacts
    def artifact_dir(self, model: str, version: str) -> str:
        return os.path.join(self.state_dir, "models", model, version)

    def write_artifact(self, model: str, version: str, payload: bytes, meta: dict) -> str:
        path = self.artifact_dir(model, version)
        tmp = path + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        with open(os.path.join(tmp, "model.pkl"), "wb") as f:
            f.write(payload)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)  # a half-written artifact is never loaded
        return path
