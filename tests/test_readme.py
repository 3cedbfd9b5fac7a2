"""The README's "Serve and query" code blocks run as written against a live server.

The blocks are read from README.md itself: the shell block that starts ``clipper-nb serve``
(run by bash, in the background), the Python client block, the ``curl`` block and the
tritonclient (V2) block. The only changes: the port 1337 becomes a free one, the state
directory a temporary one, and the token the shell block generates is also written to a
file so the test (as the reader's other terminal) can use it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from clipper_nb.wire.ports import free_port
from conftest import wait_until, worker_pids

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(section: str, end: str) -> list[tuple[str, str]]:
    text = README.read_text()
    part = text[text.index(section):text.index(end)]
    return re.findall(r"```(\w+)\n(.*?)```", part, flags=re.S)


def test_the_readme_serve_and_query_blocks_run_as_written(tmp_path):
    blocks = _blocks("## Serve and query", "### Replicas on a Ray cluster")
    kinds = [k for k, _ in blocks]
    assert kinds == ["bash", "python", "bash", "python"], kinds  # serve, client, curl, tritonclient
    port = str(free_port())
    fix = lambda code: code.replace("1337", port).replace("./clipper-state", str(tmp_path / "state"))  # noqa: E731
    serve_block = fix(blocks[0][1]).replace("\nclipper-nb serve", f'\necho "$CLIPPER_NB_TOKEN" > {tmp_path}/token\n'
                                                                  "exec clipper-nb serve", 1)
    serve = subprocess.Popen(["bash", "-c", serve_block], cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (tmp_path / "token").exists() and (tmp_path / "token").read_text().strip(), timeout=30)
        token = (tmp_path / "token").read_text().strip()
        env = {**os.environ, "CLIPPER_NB_TOKEN": token}
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(f"{url}/api/health", headers={"Authorization": f"token {token}"},
                                    timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(up, timeout=60, message="the README's clipper-nb serve")
        namespace: dict = {}
        os.environ["CLIPPER_NB_TOKEN"] = token
        try:
            exec(compile(fix(blocks[1][1]), "README: python client", "exec"), namespace)  # noqa: S102
            curl = subprocess.run(["bash", "-c", fix(blocks[2][1])], capture_output=True, text=True, env=env,
                                  timeout=60)
            exec(compile(fix(blocks[3][1]), "README: tritonclient", "exec"), namespace)  # noqa: S102
        finally:
            del os.environ["CLIPPER_NB_TOKEN"]
        answers, text, decoder = [], curl.stdout.strip(), json.JSONDecoder()
        while text:  # curl prints the three answers back to back
            value, end = decoder.raw_decode(text)
            answers.append(value)
            text = text[end:].strip()
        assert curl.returncode == 0 and len(answers) == 3, curl.stdout + curl.stderr
        assert answers[0]["output"] == 0 and answers[0]["default"] is False  # the first digit is a 0
        assert [a["output"] for a in answers[1]["batch_predictions"]] == [0, 0]
        assert "losses" in answers[2]  # the feedback was recorded
        assert namespace["labels"].shape[0] == 64 and not namespace["was_default"].any()
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(60)
        wait_until(lambda: not worker_pids(str(tmp_path)), timeout=30, message="the README server's workers to exit")
