"""Durable state under one state directory: SQLite for specs, files for artifacts.

::

    <state_dir>/clipper.sqlite3              apps, models, versions, selection state
    <state_dir>/models/<name>/<version>/     model.pkl + meta.json (what workers load)
    <state_dir>/logs/                        one log per replica (worker stdout/stderr)

Every method is blocking; the engine calls them through its one-thread executor so
that SQLite and file writes never run on the serving event loop. Transactions are
short (one statement or one small group).

Writes are honest: each one commits or rolls back as a whole, waits a moment for a lock
held by another process, and otherwise raises :class:`~clipper_nb.errors.Unavailable`
(a 503 naming the cause: locked, disk full, read-only), so a caller is told success
only once the change is on disk. Nothing half-written survives a crash: an artifact is
written beside its final place and moved in; leftovers are removed when the store opens.

Only the owner may read any of it (artifacts are pickles, logs carry tracebacks): the
directory and every folder in it are 0700, every file 0600, whatever the umask, and
a state directory made before that is tightened when the store opens it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from clipper_nb.errors import BadInput, Unavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL, version TEXT NOT NULL, spec TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS selection (
    app TEXT NOT NULL, context TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (app, context));
"""

log = logging.getLogger("clipper_nb.engine.store")

DIR_MODE = 0o700
FILE_MODE = 0o600

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
#: How long a write waits for a lock another process holds before it fails with a 503.
BUSY_TIMEOUT_MS = 2000
#: An artifact being written: a name no model version can have (names start alphanumeric).
_PARTIAL_PREFIX = ".partial-"


def check_name(kind: str, name: str) -> str:
    """Names become URL segments and folder names: keep them plain."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise BadInput(f"invalid {kind} name {name!r}",
                       "use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
    return name


class Store:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = os.path.abspath(state_dir)
        for path in (self.state_dir, os.path.join(self.state_dir, "models"), self.log_dir):
            os.makedirs(path, mode=DIR_MODE, exist_ok=True)
        _tighten(self.state_dir)
        self._lock = threading.Lock()
        self._owner = _claim(self.state_dir)
        db_path = os.path.join(self.state_dir, "clipper.sqlite3")
        # SQLite gives its -wal and -shm files the database file's mode: create it 0600 first.
        os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._remove_unfinished_artifacts()

    @property
    def log_dir(self) -> str:
        return os.path.join(self.state_dir, "logs")

    def close(self) -> None:
        with self._lock:
            self._db.close()
        os.close(self._owner)  # releases the claim

    def _exec(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _write(self, *statements: tuple[str, Any]) -> None:
        """Run ``(sql, args)`` statements as one transaction (``args`` a list: executemany).

        All or nothing: on any failure the transaction is rolled back (never left open, so
        later writes are not silently swallowed by it) and :class:`Unavailable` says why.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, args in statements:
                    if isinstance(args, list):
                        self._db.executemany(sql, args)
                    else:
                        self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise Unavailable(f"the change could not be saved: {e}",
                                  f"nothing was changed; the state directory {self.state_dir} must be writable "
                                  "(disk space, permissions, another process holding its database); try again") from e

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
        self._write(_app_row(spec))

    def delete_app(self, name: str) -> None:
        self._write(("DELETE FROM apps WHERE name = ?", (name,)), ("DELETE FROM selection WHERE app = ?", (name,)))

    def save_model(self, spec: dict, version: dict | None = None, app: dict | None = None) -> None:
        """A model's spec, with ``version`` that version's spec and with ``app`` an app's
        spec (a deploy that links it), in one transaction."""
        model = ("INSERT OR REPLACE INTO models (name, spec) VALUES (?, ?)", (spec["name"], json.dumps(spec)))
        extra = [] if version is None else [_version_row(version)]
        if app is not None:
            extra.append(_app_row(app))
        self._write(model, *extra)

    def save_version(self, spec: dict) -> None:
        self._write(_version_row(spec))

    def delete_version(self, model: str, version: str) -> None:
        self._write(("DELETE FROM versions WHERE model = ? AND version = ?", (model, version)))
        shutil.rmtree(self.artifact_dir(model, version), ignore_errors=True)

    def delete_model(self, name: str, apps: Sequence[dict] = ()) -> None:
        """A model, its versions and artifacts; ``apps``: the specs of the apps it leaves,
        saved in the same transaction."""
        self._write(("DELETE FROM models WHERE name = ?", (name,)), ("DELETE FROM versions WHERE model = ?", (name,)),
                    *map(_app_row, apps))
        shutil.rmtree(os.path.join(self.state_dir, "models", name), ignore_errors=True)

    def save_selection(self, rows: list[tuple[str, str, dict]]) -> None:
        self._write(("INSERT OR REPLACE INTO selection (app, context, state) VALUES (?, ?, ?)",
                     [(a, c, json.dumps(s)) for a, c, s in rows]))

    def delete_selection(self, app: str) -> None:
        self._write(("DELETE FROM selection WHERE app = ?", (app,)))

    def delete_contexts(self, app: str, contexts: list[str]) -> None:
        self._write(("DELETE FROM selection WHERE app = ? AND context = ?", [(app, c) for c in contexts]))

    # ------------------------------------------------------------------ artifacts
    def artifact_dir(self, model: str, version: str) -> str:
        return os.path.join(self.state_dir, "models", model, version)

    def write_artifact(self, model: str, version: str, payload: bytes, meta: dict) -> str:
        """Write a version's files (all of them or none); :class:`Unavailable` when the
        state directory cannot take them (a full disk, permissions)."""
        try:
            return self._write_artifact(model, version, payload, meta)
        except OSError as e:
            shutil.rmtree(os.path.join(self.state_dir, "models", model, _PARTIAL_PREFIX + version), ignore_errors=True)
            raise Unavailable(f"the model's files could not be saved: {e.strerror or e}",
                              f"nothing was deployed; the state directory {self.state_dir} needs space and write "
                              "permission; try again") from e

    def _write_artifact(self, model: str, version: str, payload: bytes, meta: dict) -> str:
        path = self.artifact_dir(model, version)
        tmp = os.path.join(os.path.dirname(path), _PARTIAL_PREFIX + version)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.dirname(path), mode=DIR_MODE, exist_ok=True)  # makedirs' mode is the leaf's only
        os.makedirs(tmp, mode=DIR_MODE)
        with _private_file(os.path.join(tmp, "model.pkl"), "wb") as f:
            f.write(payload)
        with _private_file(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)  # a half-written artifact is never loaded
        return path

    def _remove_unfinished_artifacts(self) -> None:
        """Files of deploys a crash interrupted: mid-write (``.partial-*``), or written but
        never registered (the server died while the version's replicas were starting)."""
        models = os.path.join(self.state_dir, "models")
        known = {(m, v) for m, v in self._exec("SELECT model, version FROM versions")}
        for model in os.listdir(models):
            folder = os.path.join(models, model)
            for entry in os.listdir(folder) if os.path.isdir(folder) else ():
                if entry.startswith(_PARTIAL_PREFIX) or (model, entry) not in known:
                    log.warning("removing an interrupted deploy's files: %s", os.path.join(folder, entry))
                    shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)


def _claim(state_dir: str) -> int:
    """Hold ``<state_dir>/lock`` for as long as this store is open (the process's exit
    releases it too): a second server on the same directory would start replicas of the
    same models beside the first and write the same database."""
    fd = os.open(os.path.join(state_dir, "lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise Unavailable(f"another clipper-nb server (pid {holder}) is using the state directory {state_dir}",
                          "stop it, or give this server another state directory") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _private_file(path: str, mode: str):
    """``open(path, mode)`` for writing, created 0600 whatever the umask."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), mode)


def _tighten(root: str) -> None:
    """Folders 0700 and files 0600 under ``root`` (a state directory from before, or a loose umask)."""
    for folder, dirs, files in os.walk(root):
        for path, mode in [(folder, DIR_MODE), *((os.path.join(folder, f), FILE_MODE) for f in files)]:
            try:
                st = os.lstat(path)
                if (st.st_mode & 0o777) != mode and not os.path.islink(path):
                    os.chmod(path, mode)
            except OSError as e:  # not ours, or gone meanwhile: say so, keep going
                log.warning("cannot make %s private: %s", path, e)


def _app_row(spec: dict) -> tuple[str, tuple]:
    return "INSERT OR REPLACE INTO apps (name, spec) VALUES (?, ?)", (spec["name"], json.dumps(spec))


def _version_row(spec: dict) -> tuple[str, tuple]:
    return ("INSERT OR REPLACE INTO versions (model, version, spec, created) VALUES (?, ?, ?, ?)",
            (spec["model"], spec["version"], json.dumps(spec), spec["created"]))
