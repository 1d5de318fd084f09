"""Stdlib logging (and structlog through it) routed into the bridge's sinks."""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from flask import Flask

from bridge import SignalBridge
from bridge.config import load_settings
from bridge.emitter import Emitter
from bridge.logging import BridgeHandler, attach_loggers, level_name, sending
from tests.conftest import read_events

_names = itertools.count()


class ListSink:
    """A sink that keeps every line it is given; `on_submit` runs first (to log, or raise)."""

    def __init__(self, name: str = "list", on_submit: Callable[[], None] | None = None) -> None:
        self.name = name
        self.lines: list[bytes] = []
        self.on_submit = on_submit

    def submit(self, line: bytes) -> bool:
        if self.on_submit is not None:
            self.on_submit()
        self.lines.append(line)
        return True

    def submit_many(self, lines: list[bytes]) -> int:
        return sum(self.submit(line) for line in lines)

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {"enqueued": len(self.lines)}

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


def make_emitter(sink: ListSink, **config: Any) -> Emitter:
    settings = load_settings({f"BRIDGE_{k.upper()}": v for k, v in config.items()}, {})
    return Emitter(settings, [sink])


@pytest.fixture
def logger_name() -> Iterator[str]:
    """A fresh logger at DEBUG, put back to NOTSET with no bridge handler afterwards."""
    name = f"tests.bridge_logging.l{next(_names)}"
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    yield name
    logger.setLevel(logging.NOTSET)
    for handler in list(logger.handlers):
        if isinstance(handler, BridgeHandler):
            logger.removeHandler(handler)


@pytest.fixture
def attached(logger_name: str) -> Iterator[tuple[logging.Logger, ListSink, Emitter]]:
    """A logger attached to an emitter whose only sink is a ListSink."""
    sink = ListSink()
    emitter = make_emitter(sink)
    detach = attach_loggers([logger_name], emitter)
    yield logging.getLogger(logger_name), sink, emitter
    detach()


class TestBridgeHandler:
    def test_record_becomes_event(self, attached: tuple[logging.Logger, ListSink, Emitter]) -> None:
        """A record becomes an event: message, level, signal "logging", log.logger."""
        logger, sink, _ = attached
        logger.info("paid %s euros", 12)
        [event] = sink.events()
        assert "paid 12 euros" == event["event"]
        assert "info" == event["level"]
        assert "logging" == event["signal"]
        assert logger.name == event["log.logger"]
        assert {"timestamp", "event_id", "service.name", "host.name", "process.pid"} <= set(event)

    @pytest.mark.parametrize(
        ("levelno", "expected"),
        [
            (logging.DEBUG, "debug"),
            (5, "debug"),
            (logging.INFO, "info"),
            (logging.WARNING, "warning"),
            (logging.ERROR, "error"),
            (logging.CRITICAL, "error"),
        ],
    )
    def test_level_mapping(
        self, attached: tuple[logging.Logger, ListSink, Emitter], levelno: int, expected: str
    ) -> None:
        """Stdlib levels map onto debug/info/warning/error; critical is error."""
        logger, sink, _ = attached
        logger.setLevel(1)
        logger.log(levelno, "x")
        assert expected == level_name(levelno)
        assert [expected] == [e["level"] for e in sink.events()]

    def test_call_site_fields(self, attached: tuple[logging.Logger, ListSink, Emitter]) -> None:
        """A record says where it was logged: code.filepath, code.lineno, code.function."""
        logger, sink, _ = attached
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        logger.info("here")
        [event] = sink.events()
        assert (__file__, line, "test_call_site_fields") == (
            event["code.filepath"],
            event["code.lineno"],
            event["code.function"],
        )

    def test_bad_format_string_still_emits(
        self, attached: tuple[logging.Logger, ListSink, Emitter], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A message whose arguments do not fit its format string still becomes an event."""
        logger, sink, emitter = attached
        # pytest's capture handlers fail a test on a bad format string: keep only the bridge's.
        monkeypatch.setattr(logger, "propagate", False)
        bridge_only = [h for h in logger.handlers if isinstance(h, BridgeHandler)]
        monkeypatch.setattr(logger, "handlers", bridge_only)
        logger.warning("%d items", "many")
        [event] = sink.events()
        assert "%d items" == event["event"]
        assert event["log.format_error"].startswith("TypeError")
        assert 0 == emitter.receiver_errors

    def test_exception_fields(self, attached: tuple[logging.Logger, ListSink, Emitter]) -> None:
        """exc_info adds exception.type, .message and .stacktrace."""
        logger, sink, _ = attached
        try:
            raise KeyError("sku-9")
        except KeyError:
            logger.exception("lookup failed")
        [event] = sink.events()
        assert "error" == event["level"]
        assert "KeyError" == event["exception.type"]
        assert "'sku-9'" == event["exception.message"]
        assert 'raise KeyError("sku-9")' in event["exception.stacktrace"]

    def test_exc_info_true_without_exception(
        self, attached: tuple[logging.Logger, ListSink, Emitter]
    ) -> None:
        """exc_info=True outside an except block adds no exception fields."""
        logger, sink, _ = attached
        logger.error("no exception here", exc_info=True)
        [event] = sink.events()
        assert not any(key.startswith("exception.") for key in event)

    def test_extra_fields_are_copied_and_redacted(
        self, attached: tuple[logging.Logger, ListSink, Emitter]
    ) -> None:
        """`extra` fields become event fields; record attributes do not; secrets are redacted."""
        logger, sink, _ = attached
        logger.info("login", extra={"user_id": 7, "password": "hunter2", "level": "x"})
        [event] = sink.events()
        assert 7 == event["user_id"]
        assert "[REDACTED]" == event["password"]
        assert "x" == event["args.level"]  # an extra field cannot forge the envelope
        assert "info" == event["level"]
        for attribute in ("msg", "args", "levelno", "pathname", "thread", "processName"):
            assert attribute not in event

    def test_logger_level_is_respected(
        self, attached: tuple[logging.Logger, ListSink, Emitter]
    ) -> None:
        """The bridge does not change logger levels: records below the level never arrive."""
        logger, sink, _ = attached
        logger.setLevel(logging.WARNING)
        logger.info("quiet")
        logger.warning("loud")
        assert ["loud"] == [e["event"] for e in sink.events()]

    def test_request_context_fields(
        self, attached: tuple[logging.Logger, ListSink, Emitter]
    ) -> None:
        """A record logged inside a request carries the request's fields."""
        logger, sink, _ = attached
        app = Flask("shop")
        with app.test_request_context("/cart?token=abc", headers={"X-Request-ID": "req-1"}):
            logger.info("in request")
        [event] = sink.events()
        assert "req-1" == event["request_id"]
        assert "/cart" == event["url.path"]
        assert "token=[REDACTED]" == event["url.query"]

    def test_size_limit_applies(self, logger_name: str) -> None:
        """A huge message is truncated so the line stays within max_line_bytes."""
        sink = ListSink()
        detach = attach_loggers([logger_name], make_emitter(sink, max_line_bytes=2048))
        try:
            logging.getLogger(logger_name).info("x" * 100_000)
        finally:
            detach()
        [line] = sink.lines
        assert len(line) <= 2048

    def test_never_raises_and_counts_failures(self, logger_name: str) -> None:
        """A failing sink never reaches the caller; the failure is counted."""

        def explode() -> None:
            raise OSError("disk gone")

        emitter = make_emitter(ListSink(on_submit=explode))
        detach = attach_loggers([logger_name], emitter)
        try:
            logging.getLogger(logger_name).error("boom")
        finally:
            detach()
        assert 1 == emitter.receiver_errors


class TestNoLoops:
    def test_logging_from_inside_the_pipeline_is_ignored(self, logger_name: str) -> None:
        """A record logged while the handler emits (a sink that logs) is not sent again."""
        logger = logging.getLogger(logger_name)
        sink = ListSink(on_submit=lambda: logger.warning("sink says hello"))
        emitter = make_emitter(sink)
        detach = attach_loggers([logger_name], emitter)
        try:
            logger.info("one")
        finally:
            detach()
        assert ["one"] == [e["event"] for e in sink.events()]
        assert 0 == emitter.receiver_errors

    @pytest.mark.parametrize(("thread_name", "sent"), [("bridge-sink-http", 0), ("worker-1", 1)])
    def test_bridge_threads_are_ignored(
        self, attached: tuple[logging.Logger, ListSink, Emitter], thread_name: str, sent: int
    ) -> None:
        """Records from the bridge's own threads (named bridge-...) are ignored."""
        logger, sink, _ = attached
        thread = threading.Thread(target=logger.info, args=("from a thread",), name=thread_name)
        thread.start()
        thread.join(timeout=10.0)
        assert not thread.is_alive()
        assert sent == len(sink.lines)

    @pytest.mark.parametrize("name", ["urllib3", "urllib3.connectionpool", "requests"])
    def test_http_client_records_while_sending_are_ignored(self, name: str) -> None:
        """urllib3/requests records are ignored while the bridge sends, kept otherwise."""
        sink = ListSink()
        logger = logging.getLogger(name)
        old_level = logger.level
        logger.setLevel(logging.DEBUG)
        detach = attach_loggers([name], make_emitter(sink))
        try:
            with sending():
                logger.debug("Starting new HTTP connection (1): collector")
            logger.debug("user's own request")
        finally:
            detach()
            logger.setLevel(old_level)
        assert ["user's own request"] == [e["event"] for e in sink.events()]


class TestAttachLoggers:
    def test_detach_removes_the_handler(self, logger_name: str) -> None:
        """After detach, records no longer reach the sinks; detach is idempotent."""
        sink = ListSink()
        logger = logging.getLogger(logger_name)
        detach = attach_loggers([logger_name], make_emitter(sink))
        logger.info("before")
        detach()
        detach()
        logger.info("after")
        assert ["before"] == [e["event"] for e in sink.events()]
        assert not any(isinstance(h, BridgeHandler) for h in logger.handlers)

    @pytest.mark.parametrize("ancestor", ["parent", "root"])
    def test_ancestor_and_child_send_once(self, logger_name: str, ancestor: str) -> None:
        """A record propagating through two listed loggers (parent or root) is sent once."""
        sink = ListSink()
        child = f"{logger_name}.db"
        names = [logger_name if ancestor == "parent" else "", child, child]
        detach = attach_loggers(names, make_emitter(sink))
        try:
            logging.getLogger(child).info("query")
            logging.getLogger(child).info("query")
        finally:
            detach()
        assert ["query", "query"] == [e["event"] for e in sink.events()]

    def test_empty_list_attaches_nothing(self, logger_name: str) -> None:
        """With no loggers configured nothing is attached anywhere."""
        before = list(logging.getLogger().handlers)
        attach_loggers([], make_emitter(ListSink()))()
        assert before == logging.getLogger().handlers

    def test_two_apps_each_get_the_record(self, logger_name: str) -> None:
        """Two bridges listing the same logger each ship its records to their own sinks."""
        first, second = ListSink("a"), ListSink("b")
        detach_first = attach_loggers([logger_name], make_emitter(first, service="a"))
        detach_second = attach_loggers([logger_name], make_emitter(second, service="b"))
        try:
            logging.getLogger(logger_name).info("shared")
        finally:
            detach_first()
            detach_second()
        assert ["a"] == [e["service.name"] for e in first.events()]
        assert ["b"] == [e["service.name"] for e in second.events()]


class TestStructlog:
    def test_render_to_log_kwargs_route(self, logger_name: str) -> None:
        """structlog events rendered with render_to_log_kwargs keep their key-value pairs."""
        sink = ListSink()
        detach = attach_loggers([logger_name], make_emitter(sink))
        config_before = structlog.get_config()
        try:
            log = structlog.wrap_logger(
                logging.getLogger(logger_name),
                processors=[structlog.stdlib.render_to_log_kwargs],
                wrapper_class=structlog.stdlib.BoundLogger,
            )
            log.bind(order_id=7).warning("paid", amount=12.5)
        finally:
            detach()
        [event] = sink.events()
        assert ("paid", "warning", 7, 12.5) == (
            event["event"],
            event["level"],
            event["order_id"],
            event["amount"],
        )
        assert config_before == structlog.get_config()

    def test_processor_formatter_event_dict(self, logger_name: str) -> None:
        """A record carrying a structlog event dict (wrap_for_formatter) is unpacked."""
        sink = ListSink()
        detach = attach_loggers([logger_name], make_emitter(sink))
        try:
            log = structlog.wrap_logger(
                logging.getLogger(logger_name),
                processors=[
                    structlog.stdlib.add_log_level,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
                ],
                wrapper_class=structlog.stdlib.BoundLogger,
            )
            log.info("shipped", parcel="p-1")
        finally:
            detach()
        [event] = sink.events()
        assert ("shipped", "info", "p-1") == (event["event"], event["level"], event["parcel"])
        assert not any(key.startswith("_") or key == "args.level" for key in event)

    def test_render_to_log_kwargs_keys_once(self, logger_name: str) -> None:
        """Through render_to_log_kwargs, structlog's level, logger name and timestamp are not
        repeated, and structlog's own code is not given as the call site."""
        sink = ListSink()
        detach = attach_loggers([logger_name], make_emitter(sink))
        try:
            log = structlog.wrap_logger(
                logging.getLogger(logger_name),
                processors=[
                    structlog.stdlib.add_log_level,
                    structlog.stdlib.add_logger_name,
                    structlog.processors.TimeStamper(fmt="iso"),
                    structlog.stdlib.render_to_log_kwargs,
                ],
                wrapper_class=structlog.stdlib.BoundLogger,
            )
            log.info("paid", order_id=7)
        finally:
            detach()
        [event] = sink.events()
        assert ("paid", "info", logger_name, 7) == (
            event["event"],
            event["level"],
            event["log.logger"],
            event["order_id"],
        )
        repeated = {"logger", "args.level", "args.timestamp", "args.logger", "code.filepath"}
        assert set() == repeated & set(event)


class TestFlaskExceptions:
    """An exception Flask both signals and logs keeps one stack trace: request.exception's."""

    def run(self, tmp_path: Path, signals: list[str]) -> list[dict[str, Any]]:
        """The events of one failing request, app.logger routed through `loggers`."""
        path = tmp_path / "events.jsonl"
        app = Flask(f"tests.flask_exc{next(_names)}")
        app.config["BRIDGE_SINKS"] = [{"type": "file", "path": str(path)}]
        app.config["BRIDGE_LOGGERS"] = [app.logger.name]
        app.config["BRIDGE_SIGNALS"] = signals

        @app.route("/fail")
        def fail() -> str:
            raise LookupError("sku-9")

        bridge = SignalBridge(app)
        try:
            assert 500 == app.test_client().get("/fail").status_code
            assert bridge.flush(timeout=10.0)
        finally:
            bridge.close(timeout=5.0)
        return read_events(path)

    def test_log_record_refers_to_the_signal_event(self, tmp_path: Path) -> None:
        """app.logger's record of the exception has its type and message, no stack trace, and
        names request.exception (same request_id) as the event that has it."""
        events = self.run(tmp_path, ["default"])
        [signaled] = [e for e in events if e["event"] == "request.exception"]
        [logged] = [e for e in events if e["signal"] == "logging"]
        assert 1 == sum("exception.stacktrace" in e for e in events)
        assert 'raise LookupError("sku-9")' in signaled["exception.stacktrace"]
        assert ("LookupError", "sku-9", "request.exception", signaled["request_id"]) == (
            logged["exception.type"],
            logged["exception.message"],
            logged["exception.stacktrace_in"],
            logged["request_id"],
        )
        assert logged["code.filepath"].endswith(os.path.join("flask", "app.py"))
        assert "log_exception" == logged["code.function"]

    def test_without_the_signal_the_record_keeps_the_stack(self, tmp_path: Path) -> None:
        """When request.exception is not written, the log record carries the stack trace."""
        events = self.run(tmp_path, ["request_finished"])
        [logged] = [e for e in events if e["signal"] == "logging"]
        assert 'raise LookupError("sku-9")' in logged["exception.stacktrace"]
        assert "exception.stacktrace_in" not in logged


class TestAppConfig:
    def test_bridge_loggers_key(self, tmp_path: Path, logger_name: str) -> None:
        """BRIDGE_LOGGERS routes the named loggers into the app's file sink until close()."""
        path = tmp_path / "events.jsonl"
        app = Flask("shop")
        app.config["BRIDGE_SINKS"] = [{"type": "file", "path": str(path)}]
        app.config["BRIDGE_LOGGERS"] = [logger_name]
        bridge = SignalBridge(app)
        logger = logging.getLogger(logger_name)
        try:
            logger.info("order placed", extra={"order_id": 3})
            assert bridge.flush(timeout=10.0)
        finally:
            bridge.close(timeout=5.0)
        logger.info("after close")
        events = read_events(path)
        assert [("order placed", 3, logger_name)] == [
            (e["event"], e["order_id"], e["log.logger"]) for e in events
        ]
        assert not any(isinstance(h, BridgeHandler) for h in logger.handlers)


class TestAppRouting:
    """A record goes to the bridge of the app it was logged in, like a custom signal."""

    @pytest.fixture
    def two_apps(self, tmp_path: Path, logger_name: str) -> Iterator[list[tuple[Flask, Path]]]:
        """Two bridged apps whose bridges both route `logger_name`, each into its own file."""
        apps: list[tuple[Flask, Path]] = []
        bridges: list[SignalBridge] = []
        for name in ("one", "two"):
            path = tmp_path / f"{name}.jsonl"
            app = Flask(name)
            app.config["BRIDGE_SINKS"] = [{"type": "file", "path": str(path)}]
            app.config["BRIDGE_LOGGERS"] = [logger_name]

            @app.route("/log")
            def log() -> str:
                logging.getLogger(logger_name).info("handled")
                return "ok"

            bridges.append(SignalBridge(app))
            apps.append((app, path))
        yield apps
        for bridge in bridges:
            bridge.close(timeout=5.0)

    def services(self, path: Path) -> list[tuple[str, str]]:
        """(message, service.name) of each log record written to `path`."""
        return [
            (e["event"], e["service.name"]) for e in read_events(path) if e["signal"] == "logging"
        ]

    def flush(self, apps: list[tuple[Flask, Path]]) -> None:
        for app, _ in apps:
            assert app.extensions["bridge"].flush(timeout=10.0)

    def test_record_in_a_request_goes_to_that_app_only(
        self, two_apps: list[tuple[Flask, Path]]
    ) -> None:
        """A record logged while app two handles a request is written by app two only."""
        (_, one_path), (two, two_path) = two_apps
        assert 200 == two.test_client().get("/log").status_code
        self.flush(two_apps)
        assert [] == self.services(one_path)
        assert [("handled", "two")] == self.services(two_path)

    def test_record_in_an_app_context_goes_to_that_app_only(
        self, two_apps: list[tuple[Flask, Path]], logger_name: str
    ) -> None:
        """Inside app one's context (a CLI command, a job) only app one's bridge writes it."""
        (one, one_path), (_, two_path) = two_apps
        with one.app_context():
            logging.getLogger(logger_name).info("job")
        self.flush(two_apps)
        assert [("job", "one")] == self.services(one_path)
        assert [] == self.services(two_path)

    def test_record_outside_any_app_goes_to_every_bridge(
        self, two_apps: list[tuple[Flask, Path]], logger_name: str
    ) -> None:
        """A record logged outside any app reaches every bridge that routes the logger."""
        (_, one_path), (_, two_path) = two_apps
        logging.getLogger(logger_name).info("script")
        self.flush(two_apps)
        assert [("script", "one")] == self.services(one_path)
        assert [("script", "two")] == self.services(two_path)

    def test_record_in_an_unbridged_app_goes_nowhere(
        self, two_apps: list[tuple[Flask, Path]], logger_name: str
    ) -> None:
        """Inside an app without a bridge, the record is no other app's event."""
        (_, one_path), (_, two_path) = two_apps
        with Flask("plain").app_context():
            logging.getLogger(logger_name).info("elsewhere")
        self.flush(two_apps)
        assert [] == self.services(one_path) == self.services(two_path)
