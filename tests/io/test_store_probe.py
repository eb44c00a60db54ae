"""The store probe: a store that honours exclusive create passes, one that ignores
`If-None-Match` is refused (or allowed in lease-only mode, with a warning).

A store that ignores the header is a real HTTP proxy in front of the real moto server that
drops `If-None-Match` from every PUT (s3fs's `pipe_file(..., mode="create")` sends a
`put_object` with `IfNoneMatch="*"`, the header `If-None-Match: *`): the one fault that
moto cannot be configured to show.
"""

from __future__ import annotations

import http.client
import http.server
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lungcls.config import Settings
from lungcls.io.storage import Storage
from lungcls.io.store_probe import PROBES_DIR, StoreProbeError, check_exclusive_create

# Hop-by-hop headers and the ones the proxy re-frames itself.
_NOT_FORWARDED = {"connection", "keep-alive", "transfer-encoding", "expect", "content-length"}


@dataclass
class ProxyLog:
    """What the proxy saw: requests by method and path, and the headers it dropped."""

    url: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0


@contextmanager
def s3_proxy(upstream: str, drop_if_none_match: bool) -> Iterator[ProxyLog]:
    """An HTTP proxy on 127.0.0.1 in front of `upstream` (the moto server); with
    `drop_if_none_match`, every PUT reaches it without its `If-None-Match` header."""
    target = urlsplit(upstream)
    seen = ProxyLog()
    lock = threading.Lock()

    class Forward(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as s3fs's client expects

        def forward(self) -> None:
            if self.headers.get("Transfer-Encoding"):  # s3fs sends Content-Length
                self.send_error(501, "chunked request bodies are not forwarded")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
            if drop_if_none_match and self.command == "PUT" and "If-None-Match" in headers:
                del headers["If-None-Match"]
                with lock:
                    seen.dropped += 1
            with lock:
                seen.requests.append((self.command, self.path))
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            finally:
                connection.close()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _NOT_FORWARDED:
                    self.send_header(name, value)
            # HEAD answers carry the object's length and no body.
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = forward

        def log_message(self, format: str, *args: object) -> None:
            pass  # the test reads `seen`, not stderr

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="s3-proxy", daemon=True)
    thread.start()
    seen.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_local_store_passes(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "root"))
    assert check_exclusive_create(storage)
    assert storage.list_files(PROBES_DIR) == []  # the probe was removed


def test_moto_server_passes(s3_settings: Settings) -> None:
    storage = Storage.from_settings(s3_settings)
    assert check_exclusive_create(storage)
    assert storage.list_files(PROBES_DIR) == []


def test_a_store_that_ignores_if_none_match_is_refused(
    s3_settings: Settings, s3_server: str
) -> None:
    with s3_proxy(s3_server, drop_if_none_match=True) as proxy:
        storage = Storage(s3_settings.root, s3_endpoint_url=proxy.url)
        with pytest.raises(StoreProbeError) as refused:
            check_exclusive_create(storage)
        # Refused every time, never cached as passed.
        with pytest.raises(StoreProbeError):
            check_exclusive_create(storage)
        assert proxy.dropped >= 4  # both creates of each probe lost their condition
        assert storage.list_files(PROBES_DIR) == []
    message = str(refused.value)
    assert refused.value.code == "store_ignores_conditional_writes"
    assert s3_settings.root in message
    assert "does not honour conditional writes" in message
    assert "overwrite each other's versions" in message
    assert "storage.lease_only: true" in message


def test_lease_only_mode_runs_with_a_warning(
    s3_settings: Settings, s3_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    with s3_proxy(s3_server, drop_if_none_match=True) as proxy:
        storage = Storage(s3_settings.root, s3_endpoint_url=proxy.url)
        with caplog.at_level(logging.WARNING, logger="lungcls.io.store_probe"):
            assert check_exclusive_create(storage, lease_only=True) is False
    assert proxy.dropped >= 2
    assert "lease-only mode" in caplog.text


def test_a_passing_store_is_probed_once_per_process(s3_settings: Settings, s3_server: str) -> None:
    with s3_proxy(s3_server, drop_if_none_match=False) as proxy:
        storage = Storage(s3_settings.root, s3_endpoint_url=proxy.url)
        assert check_exclusive_create(storage)
        probe_puts = [p for m, p in proxy.requests if m == "PUT" and f"/{PROBES_DIR}/" in p]
        assert len(probe_puts) == 2  # the probe key, created twice
        assert proxy.dropped == 0
        before = len(proxy.requests)
        assert check_exclusive_create(Storage(s3_settings.root, s3_endpoint_url=proxy.url))
        assert len(proxy.requests) == before  # the second check asked the store nothing
