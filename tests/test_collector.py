"""The test collector itself: it must leave nothing behind that could fail another test."""

from __future__ import annotations

import gc
import socket
import ssl
import struct
import warnings

import pytest
import trustme

from tests.collector import Collector, _Server


class TestTlsCollector:
    def test_a_connection_reset_before_accept_leaves_no_socket(self) -> None:
        """A client gone (TCP reset) before the TLS collector accepted it: the accept fails
        and closes every socket it made, so no ResourceWarning fails a later test."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
        with Collector(start_down=True) as collector:
            server = _Server(0, collector, context)  # not serving: the test accepts
            try:
                client = socket.create_connection(("127.0.0.1", server.server_address[1]))
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # a reset, before any accept
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ResourceWarning)
                    with pytest.raises(OSError):
                        server.get_request()
                    gc.collect()
            finally:
                server.server_close()
        assert [] == [str(w.message) for w in caught]
