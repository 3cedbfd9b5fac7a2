"""A full disk under a real ``clipper-nb serve``: a size-capped file system made for the test.

The state directory lives on a 32 MiB tmpfs mounted here (root only: skipped, saying so,
where ``mount`` is not permitted). Once a filler file has taken every free byte, each
change the server cannot store (a new app, an SLO change, a deploy, a feedback) is a 503
and is not served, while queries keep being answered; once space is back, writes succeed
again; after a restart everything that was acknowledged is there and nothing refused is.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from conftest import ServeProcess
from clipper_nb.errors import NotFound, Unavailable

pytestmark = [pytest.mark.slow, pytest.mark.fault]


def double(batch):
    return [2.0 * row[0] for row in batch]


@pytest.fixture
def small_fs(tmp_path):
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _fill(path: str) -> None:
    """Take every free byte of the file system ``path`` is on (unbuffered: nothing left to
    fail at close)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 64 << 10, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)


def test_a_full_disk_refuses_changes_with_503_keeps_serving_and_loses_nothing_acknowledged(small_fs, tmp_path):
    state = str(small_fs / "state")
    serve = ServeProcess(state_dir=state, log_dir=str(tmp_path)).start()
    try:
        c = serve.client()
        c.deploy(double, "double", app="kept", slo_ms=2000)
        c.set_policy("kept", "exp3")
        filler = str(small_fs / "filler")
        _fill(filler)

        with pytest.raises(Unavailable) as e:
            c.register_app("refused", slo_ms=50)
        assert e.value.status == 503 and "could not be saved" in str(e.value)
        with pytest.raises(Unavailable):
            c.set_slo("kept", 999)
        with pytest.raises(Unavailable):
            c.deploy(lambda batch: [0.0] * len(batch), "refused-model")
        with pytest.raises(Unavailable, match="learnt from but not yet saved"):
            c.feedback("kept", [1.0], 2.0, context="u")
        # refused changes are not served, and queries are still answered
        with pytest.raises(NotFound):
            c.app("refused")
        assert c.app("kept")["slo_ms"] == 2000
        assert "refused-model" not in c.models()["name"].tolist()
        assert c.predict("kept", [21.0])["output"] == 42.0

        os.remove(filler)  # space is back: so are the writes
        c.set_slo("kept", 500)
        c.register_app("after", slo_ms=70)
        assert c.feedback("kept", [1.0], 2.0, context="u")["updates"] >= 1

        serve.restart()
        c = serve.client()
        assert c.app("kept")["slo_ms"] == 500 and c.app("after")["slo_ms"] == 70
        with pytest.raises(NotFound):
            c.app("refused")
        assert sorted(c.models()["name"].tolist()) == ["double"]
        assert c.selection("kept", "u")["updates"] >= 1
        assert c.predict("kept", [4.0])["output"] == 8.0
    finally:
        serve.stop()
