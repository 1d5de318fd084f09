"""bridge.testing.capture_events, used the way an application's own tests would."""

from __future__ import annotations

from collections.abc import Callable

from bridge import capture_events
from tests.conftest import LOGIN_SIGNAL, BridgedApp


class TestCaptureEvents:
    def test_captures_a_login_audit_event(self, make_bridged: Callable[..., BridgedApp]) -> None:
        """A login inside the block shows up as a processed, redacted event dict."""
        bridged = make_bridged(signals=["user-login"])
        with capture_events() as events:
            bridged.client.post("/login")
            LOGIN_SIGNAL.send(bridged.app, user_id=8, password="pw")
        assert [7, 8] == [e["user_id"] for e in events]
        assert "[REDACTED]" == events[1]["password"]
        assert 2 == len(bridged.events()), "the sinks still receive the events"

    def test_only_inside_the_block(self, make_bridged: Callable[..., BridgedApp]) -> None:
        """Events before and after the block are not captured."""
        bridged = make_bridged(signals=["user-login"])
        LOGIN_SIGNAL.send(bridged.app, user_id=1)
        with capture_events(bridged.bridge) as events:
            LOGIN_SIGNAL.send(bridged.app, user_id=2)
        LOGIN_SIGNAL.send(bridged.app, user_id=3)
        assert [2] == [e["user_id"] for e in events]
