""""Test cluster" for job mode: the Jobs REST API's version endpoint over plain HTTP, against a
loopback server that answers as a token-auth Ray dashboard does (Bearer header or HTTP 401)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from plugin.core.env.cluster_probe import probe_jobs, probe_ray
from plugin.core.errors import EngineError

TOKEN = "tok-" + "a1b2" * 8


@pytest.fixture
def dashboard() -> Iterator[dict[str, Any]]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.path)
            if self.path != "/api/version":
                self.send_response(404)
                self.end_headers()
                return
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"version": "4", "ray_version": "2.60.0", "ray_commit": "abc"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield {"url": f"http://127.0.0.1:{srv.server_address[1]}", "seen": seen}
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_job_mode_check_sends_the_token_as_a_bearer_header(dashboard, monkeypatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    out = probe_jobs(dashboard["url"] + "/")
    assert out["cluster_version"] == "2.60.0" and out["auth"] == "token" and out["kind"] == "ray-job"
    try:
        import ray

        assert out["client_version"] == ray.__version__ and out["mismatch"] == (ray.__version__ != "2.60.0")
    except ImportError:  # job mode needs no Ray here: nothing to compare
        assert out["client_version"] is None and out["mismatch"] is False
    assert dashboard["seen"] == ["/api/version"]


def test_job_mode_check_errors_are_one_line(dashboard, monkeypatch) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    with pytest.raises(EngineError) as e:
        probe_jobs(dashboard["url"])
    assert "refused this engine (HTTP 401)" in str(e.value) and "token" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong-" + TOKEN)
    with pytest.raises(EngineError) as e:
        probe_jobs(dashboard["url"])
    assert "HTTP 401" in str(e.value) and TOKEN not in str(e.value)
    with pytest.raises(EngineError) as e:
        probe_jobs(dashboard["url"] + "/nothing-here")
    assert "HTTP 404" in str(e.value) and "Ray dashboard" in str(e.value)
    with pytest.raises(EngineError) as e:
        probe_jobs("head:8265")
    assert "expected http://host:8265" in str(e.value)


def test_ray_check_of_an_address_where_nothing_listens_is_one_line() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EngineError) as e:
        probe_ray(f"127.0.0.1:{port}")
    assert str(e.value).startswith(f"cannot reach the Ray cluster at 127.0.0.1:{port}") and "\n" not in str(e.value)
    with pytest.raises(EngineError):
        probe_ray("")
