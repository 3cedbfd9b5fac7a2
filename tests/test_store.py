"""The store's writes are honest: all or nothing, a clear 503 when the disk says no, and
nothing half-written after a crash. Real SQLite files in a temporary state directory."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from clipper_nb.abstraction.inprocess import InProcessBackend
from clipper_nb.config import ClipperNB
from clipper_nb.engine import Engine
from clipper_nb.engine.store import Store, check_name
from clipper_nb.errors import BadInput, Unavailable

APP = {"name": "a", "slo_ms": 20}


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "state"))
    yield s
    s.close()


def _persisted_apps(state_dir: str) -> list[dict]:
    """What another process reading the database sees (the store itself is still open)."""
    with sqlite3.connect(os.path.join(state_dir, "clipper.sqlite3")) as db:
        return [json.loads(spec) for (spec,) in db.execute("SELECT spec FROM apps ORDER BY name")]


def _other_writer(store: Store) -> sqlite3.Connection:
    """A second process's connection holding the database's write lock."""
    other = sqlite3.connect(os.path.join(store.state_dir, "clipper.sqlite3"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_locked_database_fails_the_write_clearly_and_leaves_no_transaction_open(store):
    store._db.execute("PRAGMA busy_timeout=50")  # the test need not wait the default 2 s
    other = _other_writer(store)
    with pytest.raises(Unavailable, match="could not be saved: database is locked") as e:
        store.save_app(APP)
    assert e.value.status == 503 and "nothing was changed" in e.value.cause
    assert not store._db.in_transaction  # an open transaction would swallow every later write
    other.execute("ROLLBACK")
    other.close()
    store.save_app({**APP, "slo_ms": 30})  # the store writes again once the lock is gone
    assert _persisted_apps(store.state_dir) == [{**APP, "slo_ms": 30}]


def test_a_full_disk_fails_the_write_and_rolls_back_every_statement(store):
    store.save_app(APP)
    store.save_selection([("a", "", {"w": 1})])
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")  # SQLITE_FULL: "database or disk is full"
    big = [("a", f"ctx{i}", {"w": "x" * 2000}) for i in range(50)]
    with pytest.raises(Unavailable, match="disk is full"):
        store.save_selection(big)
    assert not store._db.in_transaction
    assert [c for _, c, _ in store.load()["selection"]] == [""]  # none of the 50 rows half-written
    store._db.execute("PRAGMA max_page_count=1073741823")
    store.save_selection(big)
    assert len(store.load()["selection"]) == 51


def test_an_interrupted_deploy_leaves_no_files_and_never_collides_with_a_version(tmp_path):
    state = str(tmp_path / "state")
    s = Store(state)
    s.write_artifact("m", "1.partial", b"a version that happens to be called 1.partial", {"kind": "callable"})
    s.save_version({"model": "m", "version": "1.partial", "created": 1.0})
    crashed = os.path.join(state, "models", "m", ".partial-2")
    os.makedirs(crashed)
    open(os.path.join(crashed, "model.pkl"), "wb").close()
    # written whole, but the server died while its replicas started: never registered
    s.write_artifact("m", "3", b"never registered", {"kind": "callable"})
    s.close()
    s = Store(state)  # a restart after the crash
    assert sorted(os.listdir(os.path.join(state, "models", "m"))) == ["1.partial"]
    s.close()


@pytest.mark.parametrize("name", ["ok", "a.b-c_1", "x" * 64])
def test_plain_names_pass(name):
    assert check_name("model", name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "-x", "a/b", "a b", "x" * 65, "digits\n", "é", None, 3])
def test_other_names_are_refused(name):
    with pytest.raises(BadInput, match="invalid model name"):
        check_name("model", name)


# --- the engine over a store that cannot write: a 503, and memory unchanged ------------------

@pytest.fixture
async def engine(tmp_path):
    eng = Engine(ClipperNB(state_dir=str(tmp_path / "state")), backends={"process": InProcessBackend()})
    await eng.start()
    eng.store._db.execute("PRAGMA busy_timeout=50")
    yield eng
    await eng.stop()


async def test_a_change_the_store_refuses_is_not_served(engine):
    await engine.register_app("kept", slo_ms=40)
    other = _other_writer(engine.store)
    try:
        with pytest.raises(Unavailable):
            await engine.register_app("lost", slo_ms=50)
        with pytest.raises(Unavailable):
            await engine.update_app("kept", slo_ms=99, policy="exp4")
        with pytest.raises(Unavailable):
            await engine.delete_app("kept")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert "lost" not in engine.apps
    kept = engine.describe_app("kept")
    assert kept["slo_ms"] == 40 and kept["policy"] == "single"
    await engine.update_app("kept", slo_ms=99)  # once the store writes again, so does the engine
    assert _persisted_apps(engine.store.state_dir)[0]["slo_ms"] == 99


def test_a_second_server_cannot_open_the_same_state_directory(tmp_path):
    first = Store(str(tmp_path / "state"))
    with pytest.raises(Unavailable, match=rf"another clipper-nb server \(pid {os.getpid()}\) is using"):
        Store(str(tmp_path / "state"))
    first.close()
    Store(str(tmp_path / "state")).close()  # free again once the first has closed


def _persisted_contexts(state_dir: str, app: str) -> dict[str, dict]:
    with sqlite3.connect(os.path.join(state_dir, "clipper.sqlite3")) as db:
        return {c: json.loads(s) for c, s in db.execute("SELECT context, state FROM selection WHERE app = ?", (app,))
                if not c.startswith("\x00")}


def twice(batch):
    return [2 * row[0] for row in batch]


async def test_acknowledged_feedback_is_on_disk_and_a_failed_write_is_kept_for_the_next(engine):
    from clipper_nb.wire import artifact

    payload, meta = artifact.package(twice)
    await engine.deploy("twice", payload, meta, app="fb", slo_ms=2000)
    await engine.update_app("fb", policy="exp4")
    done = await engine.feedback("fb", [1.0], 2.0, context="ana")
    assert done["updates"] == 1
    # acknowledged = durable: another process sees it now, not after the 1 s flush
    assert _persisted_contexts(engine.store.state_dir, "fb")["ana"]["updates"] == 1

    other = _other_writer(engine.store)
    try:
        with pytest.raises(Unavailable, match="could not be saved"):
            await engine.feedback("fb", [1.0], 2.0, context="ana")
    finally:
        other.execute("ROLLBACK")
        other.close()
    await engine._flush_selection()  # the next flush writes what the failed one could not
    assert _persisted_contexts(engine.store.state_dir, "fb")["ana"]["updates"] == 2


def _persisted_models(state_dir: str) -> dict[str, dict]:
    with sqlite3.connect(os.path.join(state_dir, "clipper.sqlite3")) as db:
        models = {json.loads(s)["name"]: json.loads(s) for (s,) in db.execute("SELECT spec FROM models")}
        versions = [tuple(r) for r in db.execute("SELECT model, version FROM versions ORDER BY model, version")]
    return {"models": models, "versions": versions}


async def test_a_model_change_the_store_refuses_is_not_served(engine):
    """Deploy (with or without creating an app), rollback, scale and undeploy answered 503
    leave what is served as it is stored: the memory changes only after the disk."""
    from clipper_nb.wire import artifact

    payload, meta = artifact.package(twice)
    await engine.deploy("twice", payload, meta, app="m", slo_ms=2000)
    await engine.deploy("twice", payload, meta)  # v2, current
    stored = _persisted_models(engine.store.state_dir)
    other = _other_writer(engine.store)
    try:
        with pytest.raises(Unavailable):
            await engine.deploy("twice", payload, meta)  # v3 would start, then fail to be stored
        with pytest.raises(Unavailable):
            await engine.deploy("twice", payload, meta, app="new-app")  # nor create and link an app
        with pytest.raises(Unavailable):
            await engine.rollback("twice", "1")
        with pytest.raises(Unavailable):
            await engine.scale("twice", 2)
        with pytest.raises(Unavailable):
            await engine.undeploy("twice")
    finally:
        other.execute("ROLLBACK")
        other.close()
    served = engine.describe_model("twice")
    assert (served["version"], served["versions"], served["replicas"]) == ("2", ["1", "2"], 1), served
    assert engine.describe_app("m")["models"] == ["twice"] and "new-app" not in engine.apps
    assert (await engine.predict("m", [4.0]))["output"] == 8.0
    assert _persisted_models(engine.store.state_dir) == stored
    assert [a["name"] for a in _persisted_apps(engine.store.state_dir)] == ["m"]
    assert len(engine.status()) == 1  # the refused scale's replica was stopped again

    await engine.undeploy("twice")  # once the store writes again, so does the engine
    assert _persisted_models(engine.store.state_dir) == {"models": {}, "versions": []}
    assert _persisted_apps(engine.store.state_dir)[0]["models"] == []


async def test_feedback_is_not_acknowledged_while_a_flush_holding_it_is_unwritten(engine):
    """The 1 s flush loop may take the feedback's rows before the group commit does: the
    feedback must wait for that flush's outcome, not answer 200 because it found nothing
    left to write."""
    import asyncio

    from clipper_nb.wire import artifact

    payload, meta = artifact.package(twice)
    await engine.deploy("twice", payload, meta, app="fb", slo_ms=2000)
    await engine.update_app("fb", policy="exp4")
    engine.store._db.execute("PRAGMA busy_timeout=300")
    other = _other_writer(engine.store)
    try:
        answer = asyncio.ensure_future(engine.feedback("fb", [1.0], 2.0, context="ana"))
        for _ in range(10_000):  # the update is in memory; its group commit has not started
            if engine.states.dirty or answer.done():
                break
            await asyncio.sleep(0)
        assert engine.states.dirty and not answer.done()
        loop_flush = asyncio.ensure_future(engine._flush_selection())  # what the flush loop does
        with pytest.raises(Unavailable, match="learnt from but not yet saved") as e:
            await answer
        assert "sending it again would count it twice" in e.value.cause
        with pytest.raises(Unavailable):
            await loop_flush
    finally:
        other.execute("ROLLBACK")
        other.close()
    await engine._flush_selection()
    assert _persisted_contexts(engine.store.state_dir, "fb")["ana"]["updates"] == 1


def test_a_full_disk_during_an_artifact_write_is_a_503_and_leaves_no_files(store, monkeypatch):
    import errno

    from clipper_nb.engine import store as store_mod

    def no_space(path, mode):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(store_mod, "_private_file", no_space)  # what a full file system answers
    with pytest.raises(Unavailable, match="model's files could not be saved: No space left on device") as e:
        store.write_artifact("m", "1", b"payload", {"kind": "callable"})
    assert e.value.status == 503 and "nothing was deployed" in e.value.cause
    assert os.listdir(os.path.join(store.state_dir, "models", "m")) == []
