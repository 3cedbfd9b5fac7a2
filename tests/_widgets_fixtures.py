"""Shared helpers for the widget, dashboard-page and browser tests (issue 6).

The deliberate seam for testing widgets without a browser is the comm, as in
ipywidgets' own tests (``ipywidgets/widgets/tests/utils.py``): ``comm.create_comm``
is replaced by a factory of :class:`RecordingComm`, which records every protocol
message a widget would send to the frontend, and lets a test deliver the messages a
frontend would send.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import comm
import pytest
from comm.base_comm import BaseComm

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts")


@dataclass
class Message:
    comm_id: str
    msg_type: str  # comm_open, comm_msg, comm_close
    data: dict
    buffers: list


@dataclass
class Recorder:
    """Every message sent by every comm opened while the fixture is active."""

    messages: list[Message] = field(default_factory=list)

    def of(self, widget: Any) -> list[Message]:
        return [m for m in self.messages if m.comm_id == widget.model_id]

    def bokeh_events(self, widget: Any, start: int = 0) -> list[dict]:
        """Bokeh document events (``ColumnsStreamed``, ``ModelChanged``, ...) that a
        jupyter_bokeh ``BokehModel`` sent from message ``start`` on."""
        events = []
        for m in self.of(widget)[start:]:
            content = m.data.get("content", {}) if m.data.get("method") == "custom" else {}
            payload = content.get("payload") if content.get("msg") == "patch" else None
            if isinstance(payload, str) and '"events"' in payload:
                events.extend(json.loads(payload)["events"])
        return events

    def all_text(self) -> str:
        return "\n".join(json.dumps(m.data, default=str) for m in self.messages)


class RecordingComm(BaseComm):
    """A comm that records what it would publish to the frontend."""

    recorder: Recorder | None = None

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None,
                    **keys: Any) -> None:
        if RecordingComm.recorder is not None:
            RecordingComm.recorder.messages.append(Message(self.comm_id, msg_type, data or {}, list(buffers or [])))


@pytest.fixture
def comms(monkeypatch) -> Iterator[Recorder]:
    """Record every widget's comm traffic (the seam ipywidgets' own tests use)."""
    recorder = Recorder()
    monkeypatch.setattr(RecordingComm, "recorder", recorder)
    monkeypatch.setattr(comm, "create_comm", lambda *args, **kwargs: RecordingComm(*args, **kwargs))
    yield recorder


def from_frontend(widget: Any, **state: Any) -> None:
    """Deliver the ``update`` message a browser sends when the user moves a control."""
    widget._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}},
                        "buffers": []})


class Constant:
    """A model that answers ``value`` for every row (cheap: the tests measure the
    widgets). A class, not a function, so that clipper_nb.wire.artifact pickles this
    module by value and the workers need not import the tests."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self, batch: list) -> list:
        return [self.value] * len(batch)


zeros = Constant(0)
ones = Constant(1)


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium; browser tests skip (not fail) only when it is not installed."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium chromium-driver)")
    os.makedirs(ARTIFACTS, exist_ok=True)
    return CHROMIUM


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
