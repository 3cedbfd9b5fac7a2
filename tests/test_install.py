"""The README's install leaves the Jupyter server extension enabled: editable and regular.

Each case makes a fresh virtualenv, installs this checkout into it with pip as the
README says (``pip install -e .`` / ``pip install .``; the dependencies come from the
test environment through a ``.pth`` file, so nothing is downloaded but the build
backend), then asks Jupyter, from the repository root and from elsewhere, which server
extensions are enabled. ``jupyter server extension enable`` is never run: the install
alone must do it.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    # The test environment's packages (jupyter_server, numpy, ...) without reinstalling them.
    Path(site, "_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _enabled_extensions(python: Path, cwd: Path) -> str:
    # `jupyter server extension list`, as its console script runs it: -P keeps the working
    # directory off sys.path (a script's own folder is there instead, not the cwd).
    done = subprocess.run([str(python), "-P", "-m", "jupyter_server.extension.serverextension", "list"], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


@pytest.mark.parametrize("editable", [True, False], ids=["pip install -e .", "pip install ."])
def test_install_enables_the_jupyter_extension(tmp_path, editable):
    python = _venv(tmp_path / "venv")
    target = ["-e", str(ROOT)] if editable else [str(ROOT)]
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           *target], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    config = tmp_path / "venv" / "etc" / "jupyter" / "jupyter_server_config.d" / "clipper_nb.json"
    assert config.is_file(), "the install did not ship the extension's Jupyter config"
    for cwd in (ROOT, tmp_path):
        listing = _enabled_extensions(python, cwd)
        section = listing.split(f"Config dir: {tmp_path / 'venv' / 'etc' / 'jupyter'}", 1)
        assert len(section) == 2, listing
        mine = section[1].split("Config dir:", 1)[0]
        assert "clipper_nb" in mine and "enabled" in mine and "OK" in mine, (cwd, listing)
