"""Envelope pieces: timestamps, event ids, request context capture."""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid

from bridge.events import exception_fields, redact_query, request_fields, timestamp_and_id
from bridge.processors import SensitiveKeys

SENSITIVE = SensitiveKeys(("password", "token"))


class TestTimestamps:
    def test_rfc3339_utc_with_microseconds(self) -> None:
        """The timestamp is RFC 3339 UTC with microseconds and Z, close to now."""
        stamp, _ = timestamp_and_id()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert abs((dt.datetime.now(dt.UTC) - parsed).total_seconds()) < 60


class TestEventIds:
    def test_uuid7(self) -> None:
        """Event ids are valid UUIDv7 text."""
        value = uuid.UUID(timestamp_and_id()[1])
        assert 7 == value.version
        assert uuid.RFC_4122 == value.variant

    def test_unique_and_time_ordered(self) -> None:
        """Ids from one process are unique and sort in emission order."""
        ids = [timestamp_and_id()[1] for _ in range(20_000)]
        assert len(ids) == len(set(ids))
        assert ids == sorted(ids)

    def test_forked_child_does_not_repeat_the_parent(self) -> None:
        """A forked child draws different random bits than its parent."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.write(write_fd, "\n".join(timestamp_and_id()[1] for _ in range(100)).encode())
            os._exit(0)
        os.close(write_fd)
        parent_ids = {timestamp_and_id()[1] for _ in range(100)}
        with os.fdopen(read_fd, "rb") as pipe:
            child_ids = set(pipe.read().decode().split("\n"))
        os.waitpid(pid, 0)
        assert 100 == len(child_ids)
        assert not parent_ids & child_ids


class TestRequestFields:
    def test_reads_environ_once(self) -> None:
        """The fields are cached in the environ: a second call returns the same dict."""
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/a", "REMOTE_ADDR": "10.0.0.1"}
        first = request_fields(environ, "/a", SENSITIVE)
        assert first is request_fields(environ, "/a", SENSITIVE)
        assert ("GET", "/a", "10.0.0.1") == (
            first["http.request.method"],
            first["url.path"],
            first["client.address"],
        )

    def test_utf8_path_from_wsgi_latin1(self) -> None:
        """A UTF-8 path, which WSGI passes as latin-1 text, is decoded back."""
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/café".encode().decode("latin-1")}
        assert "/café" == request_fields(environ, None, SENSITIVE)["url.path"]

    def test_request_id_header_is_bounded(self) -> None:
        """An attacker-sized X-Request-ID is cut to a sane length."""
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_X_REQUEST_ID": "r" * 10_000}
        assert 512 == len(request_fields(environ, None, SENSITIVE)["request_id"])

    def test_query_redaction(self) -> None:
        """Sensitive query parameters keep their name and lose their value."""
        assert "a=1&password=[REDACTED]&b&Token=[REDACTED]" == redact_query(
            "a=1&password=hunter2&b&Token=x", SENSITIVE
        )


class TestExceptionFields:
    def test_fields(self) -> None:
        """Type, message and stack of an exception, with OpenTelemetry names."""
        try:
            raise KeyError("missing")
        except KeyError as exc:
            fields = exception_fields(exc)
        assert "KeyError" == fields["exception.type"]
        assert "'missing'" == fields["exception.message"]
        assert "test_events.py" in fields["exception.stacktrace"]

    def test_str_that_raises(self) -> None:
        """An exception whose __str__ raises still gives fields."""

        class Nasty(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no")

        fields = exception_fields(Nasty())
        assert fields["exception.type"].endswith("Nasty")
        assert "str() failed" in fields["exception.message"]
