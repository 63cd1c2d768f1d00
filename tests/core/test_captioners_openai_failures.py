"""The openai captioner failing well, against real loopback servers: refused, stalled, redirected,
empty or HTML replies, cancel, and the API key never leaving its origin."""

from __future__ import annotations

import json
import logging
import re
import threading
import time

import pytest
from captioner_tiles import WATER, fill, make_tile
from loopback_servers import ScriptedServer, StallServer, closed_port

from plugin.core.captioners import make_captioner, preflight_captioner
from plugin.core.captioners.openai_api import openai_compat, openai_http
from plugin.core.errors import Canceled, CaptionerError, EngineError


def _tile():
    return [make_tile(fill(24, 24, WATER), has_nir=False, tile_id="t")]


@pytest.fixture
def stall():
    s = StallServer()
    yield s
    s.close()


def test_refused_connection_fails_in_seconds_with_progress():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    notes: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(CaptionerError) as err:
        preflight_captioner(f"openai:{url}#m", {}, notes.append, lambda: False)
    assert time.monotonic() - t0 < 15
    msg = str(err.value)
    assert "\n" not in msg and "connection refused" in msg and "after 4 attempts" in msg
    assert notes[0] == "checking the captioner server"
    assert notes[1].startswith("waiting for the captioner server (attempt 2 of 4): connection refused")
    assert len(notes) == 4  # one line per failed attempt, none after the error


def test_only_server_captioners_are_checked(monkeypatch):
    """spectral and transformers have no server: the preflight says nothing and builds no captioner
    (a transformers model would load here, before the job's own load)."""
    import plugin.core.captioners as captioners

    built: list[str] = []
    monkeypatch.setattr(captioners, "make_captioner", lambda spec, **kw: built.append(spec))
    notes: list[str] = []
    for spec in ("spectral", "", "transformers:/models/llava", "vllm:org/model"):
        preflight_captioner(spec, {}, notes.append, lambda: False)
    assert notes == [] and built == []
    with pytest.raises(AttributeError):  # the openai kind does build one (the stand-in has no check_server)
        preflight_captioner("openai:http://127.0.0.1:9/v1#m", {}, notes.append, lambda: False)
    assert built == ["openai:http://127.0.0.1:9/v1#m"]


def test_stalled_server_check_fails_alone(stall, monkeypatch):
    monkeypatch.setattr(openai_compat, "CHECK_READ_TIMEOUT_S", 0.5)
    t0 = time.monotonic()
    with pytest.raises(CaptionerError, match="accepted the connection but sent no answer to GET /models within 0.5 s"):
        preflight_captioner(f"openai:{stall.url}#m", {"connect_timeout_s": 0.2}, lambda m: None, lambda: False)
    assert time.monotonic() - t0 < 3
    assert stall.accepted == 1  # a stall is not retried


def test_check_reports_a_refused_key_and_passes_a_server_without_models():
    srv = ScriptedServer(lambda m, p, h: (401, {}, b'{"error": {"message": "bad key"}}') if h.get("authorization") == "Bearer wrong" else (404, {}, b"no such route"))
    try:
        with pytest.raises(CaptionerError, match=r"refused the API key: HTTP 401: bad key"):
            preflight_captioner(f"openai:{srv.url}#m", {"api_key": "wrong"}, lambda m: None, lambda: False)
        preflight_captioner(f"openai:{srv.url}#m", {}, lambda m: None, lambda: False)  # 404: up, lists nothing
    finally:
        srv.close()


def test_tile_deadline_fails_a_stalled_chat(stall):
    cap = make_captioner(f"openai:{stall.url}#m", variants=2, concurrency=2, tile_deadline_s=1.0, connect_timeout_s=0.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(CaptionerError, match=r"did not caption a tile within 1 s .*--tile-deadline"):
            cap.caption(_tile())
    finally:
        cap.close()
    assert time.monotonic() - t0 < 3


def test_cancel_aborts_in_flight_requests(stall):
    cap = make_captioner(f"openai:{stall.url}#m", variants=3, concurrency=3, variant_requests="each")
    started = time.monotonic()
    cap.bind(lambda m: None, lambda: time.monotonic() - started > 0.5)  # type: ignore[attr-defined]
    try:
        with pytest.raises(Canceled):
            cap.caption(_tile())
        assert time.monotonic() - started < 2.0
        deadline = time.monotonic() + 2
        while stall.closed_by_client < stall.accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stall.accepted == 3 and stall.closed_by_client == 3  # the sockets were shut, not left hanging
    finally:
        cap.close()


def test_first_error_stops_every_other_request():
    calls = {"n": 0}
    lock = threading.Lock()

    def respond(method, path, headers):
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n == 1:
            time.sleep(0.3)
            return 400, {}, b'{"error": {"message": "model m does not support images"}}'
        return 503, {}, b'{"error": "busy"}'

    srv = ScriptedServer(respond)
    notes: list[str] = []
    cap = make_captioner(f"openai:{srv.url}#m", variants=4, concurrency=4, backoff_s=0.05, max_retries=50)
    cap.bind(notes.append, lambda: False)  # type: ignore[attr-defined]
    try:
        with pytest.raises(CaptionerError, match="HTTP 400: model m does not support images"):
            cap.caption(_tile())
        n_after, notes_after = srv.count(), len(notes)
        time.sleep(0.5)
        assert srv.count() == n_after and len(notes) == notes_after  # nothing retries after the error
        assert notes and all(re.fullmatch(r"waiting for the captioner server \(attempt \d+ of 51\): HTTP 503: busy", n) for n in notes)
    finally:
        cap.close()
        srv.close()


def test_empty_reply_and_html_error_page_are_one_line():
    html = b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body><h1>502</h1>\n<p>nginx</p></body></html>"
    replies = iter([(200, {}, b""), (400, {"Content-Type": "text/html"}, html)])
    srv = ScriptedServer(lambda m, p, h: next(replies))
    cap = make_captioner(f"openai:{srv.url}#m", variants=1, concurrency=1)
    try:
        with pytest.raises(CaptionerError, match="sent an empty response$"):
            cap.caption(_tile())
        with pytest.raises(CaptionerError) as err:
            cap.caption(_tile())
        assert str(err.value).endswith("HTTP 400: 502 Bad Gateway") and "\n" not in str(err.value)
    finally:
        cap.close()
        srv.close()
    long = openai_http.one_line(("word " * 500).encode())
    assert len(long) <= 200 and long.endswith("...")
    assert openai_http.one_line(json.dumps({"detail": "line one\nline two"}).encode()) == "line one line two"


def test_key_never_follows_a_redirect_to_another_origin():
    other = ScriptedServer()
    same_path_redirect = {"POST": "/v1/chat/completions", "GET": "/v1/models"}

    def redirect(method, path, headers):
        if path.startswith("/moved"):
            return None  # the same origin, after a redirect: default answer
        if path.startswith("/same"):
            return 302, {"Location": f"http://127.0.0.1:{first.port}/moved{path[5:]}"}, b""
        return 302, {"Location": f"http://127.0.0.1:{other.port}{same_path_redirect[method]}"}, b""

    first = ScriptedServer(redirect)
    try:
        cap = make_captioner(f"openai:{first.url}#m", variants=1, concurrency=1, api_key="sk-secret")
        try:
            cap.check_server()  # type: ignore[attr-defined]
            out = cap.caption(_tile())
        finally:
            cap.close()
        assert out[0][0].one_sentence.startswith("Open ocean")
        assert [(m, p) for m, p, _ in other.requests] == [("GET", "/v1/models"), ("POST", "/v1/chat/completions")]
        assert all("authorization" not in h for _, _, h in other.requests)
        assert all(h.get("authorization") == "Bearer sk-secret" for _, _, h in first.requests)
        # A redirect inside the same origin keeps the key.
        same = make_captioner(f"openai:http://127.0.0.1:{first.port}/same/v1#m", variants=1, concurrency=1, api_key="sk-secret")
        try:
            same.caption(_tile())
        finally:
            same.close()
        moved = [h for m, p, h in first.requests if p.startswith("/moved")]
        assert moved and moved[0].get("authorization") == "Bearer sk-secret"
    finally:
        first.close()
        other.close()


def test_plain_http_key_warning_once_and_only_off_loopback(caplog):
    caplog.set_level(logging.WARNING, logger=openai_http.__name__)
    openai_http._warned_plain_http.clear()
    for url in ("http://127.0.0.1:9/v1", "http://localhost:9/v1", "http://[::1]:9/v1", "https://gpu.example.org/v1"):
        make_captioner(f"openai:{url}#m", api_key="k").close()  # type: ignore[attr-defined]
    assert not caplog.records
    for _ in range(2):
        make_captioner("openai:http://gpu.example.org:8000/v1#m", api_key="k").close()  # type: ignore[attr-defined]
    make_captioner("openai:http://gpu.example.org:8000/v1#m").close()  # type: ignore[attr-defined]  # no key, no warning
    assert len(caplog.records) == 1 and "plain http:// to gpu.example.org:8000" in caplog.records[0].getMessage()


def test_timeouts_are_checked():
    with pytest.raises(EngineError, match="tile_deadline_s must be positive"):
        make_captioner("openai:http://127.0.0.1:9/v1#m", tile_deadline_s=0)
    with pytest.raises(EngineError, match="connect_timeout_s must be a number"):
        make_captioner("openai:http://127.0.0.1:9/v1#m", connect_timeout_s="soon")
