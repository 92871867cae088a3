"""The hub probe: one short question per process, so an offline machine fails at once instead of retrying."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator

import pytest
from huggingface_hub import constants

from proxsparse_ao import hub


@pytest.fixture(autouse=True)
def fresh_probe(monkeypatch):
    """A probe not answered before, asked without a proxy (the tests' endpoints are on this machine)."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    hub.hub_reachable.cache_clear()
    yield
    hub.hub_reachable.cache_clear()


def test_offline_mode_means_unreachable_without_asking(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.urllib.request, "urlopen", lambda *a, **k: pytest.fail("the network was asked"))
    assert hub.hub_reachable() is False


def test_an_endpoint_that_refuses_the_connection_is_unreachable(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub.hub_endpoint() == f"http://127.0.0.1:{port}"
    assert hub.hub_reachable() is False


@contextlib.contextmanager
def _endpoint_answering(status: int) -> Iterator[str]:
    """A local HTTP server whose every HEAD request gets `status`; yields its URL."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_any_http_answer_counts_as_reachable_even_an_error(monkeypatch):
    with _endpoint_answering(404) as url:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", url)
        assert hub.hub_reachable() is True


def test_a_failed_tls_handshake_counts_as_an_answer(monkeypatch):
    """The hub's own client may trust certificates urllib does not (REQUESTS_CA_BUNDLE, a company proxy)."""
    import ssl
    import urllib.error

    def untrusted(*args, **kwargs):
        raise urllib.error.URLError(ssl.SSLCertVerificationError("certificate verify failed"))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub.urllib.request, "urlopen", untrusted)
    assert hub.hub_reachable() is True


def test_an_endpoint_that_answers_ok_is_reachable(monkeypatch):
    with _endpoint_answering(200) as url:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", url)
        assert hub.hub_reachable() is True
