"""The openai captioner against a local HTTP server started by the test (no network beyond 127.0.0.1)."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from captioner_tiles import FOREST, WATER, fill, make_tile

from plugin.core.captioners import make_captioner
from plugin.core.errors import CaptionerError

ANSWER = {"one_sentence": "Open ocean with a wooded shore.", "feature": "water in the west; forest in the east",
          "caption": "A coast where dark blue water meets dense trees."}


class FakeServer:
    """A chat-completions endpoint whose behaviour each test scripts (status sequence, body)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.script: list[tuple[int, dict, dict]] = []  # consumed first, then 200 + ANSWER
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append(body)
                    owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                    owner.active += 1
                    owner.max_active = max(owner.max_active, owner.active)
                    status, payload, headers = owner.script.pop(0) if owner.script else (200, None, {})
                time.sleep(0.02)
                if payload is None:
                    k = len(owner.requests)
                    payload = {"choices": [{"message": {"role": "assistant",
                                                        "content": "```json\n" + json.dumps({**ANSWER, "caption": f"{ANSWER['caption']} #{k}"}) + "\n```"}}]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                for hk, hv in headers.items():
                    self.send_header(hk, hv)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with owner.lock:
                    owner.active -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def _tiles():
    half = fill(32, 32, FOREST)
    half[:, :, :16] = fill(32, 16, WATER)
    return [make_tile(half, tile_id="a"), make_tile(fill(24, 24, WATER), has_nir=False, tile_id="b")]


def test_request_schema_and_parsed_answers(server):
    cap = make_captioner(f"openai:{server.url}#llava:7b", variants=3, api_key="sk-test", max_new_tokens=99, concurrency=2)
    try:
        out = cap.caption(_tiles())
    finally:
        cap.close()
    assert len(server.requests) == 6
    for body, headers in zip(server.requests, server.headers):
        assert body["model"] == "llava:7b" and body["max_tokens"] == 99
        assert headers["authorization"] == "Bearer sk-test"
        assert headers["content-type"] == "application/json"
        assert body["messages"][0]["role"] == "system"
        user = body["messages"][1]
        assert user["role"] == "user"
        parts = {p["type"]: p for p in user["content"]}
        assert "JSON" in parts["text"]["text"]
        url = parts["image_url"]["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        assert base64.b64decode(url.split(",", 1)[1])[:3] == b"\xff\xd8\xff"  # JPEG, not PNG
    # Variant 0 greedy, others sampled with distinct seeds.
    temps = sorted({(b["temperature"], b["seed"]) for b in server.requests})
    assert temps[0] == (0.0, 0) and len(temps) == 3
    assert server.max_active <= 2
    assert [len(v) for v in out] == [3, 3]
    first = out[0][0]
    assert first.one_sentence == ANSWER["one_sentence"] and first.feature == ANSWER["feature"]
    assert "Near-infrared measurements" in first.caption  # the NIR tile gets spectral facts
    assert "Near-infrared" not in out[1][0].caption
    # The cache key names the model, never the server (a pool behind a balancer, a new port); this
    # server does not list its models (GET is not implemented), so nothing more is known.
    assert cap.fingerprint.startswith("openai|llava:7b|rev=unknown|") and server.url not in cap.fingerprint
    second = FakeServer()
    other = make_captioner(f"openai:{second.url}#llava:7b", variants=3, max_new_tokens=99)
    pinned = make_captioner("openai:http://10.0.0.9:8000/v1#llava:7b", variants=3, max_new_tokens=99, revision="q4")
    try:
        assert other.fingerprint == cap.fingerprint and "rev=q4" in pinned.fingerprint  # a pinned one asks nobody
    finally:
        other.close(), pinned.close(), second.close()


def test_retry_after_429_then_200(server):
    server.script = [(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.2"}),
                     (503, {"error": "busy"}, {})]
    cap = make_captioner(f"openai:{server.url}#m", variants=1, concurrency=1, backoff_s=0.05)
    t0 = time.perf_counter()
    try:
        out = cap.caption(_tiles()[:1])
    finally:
        cap.close()
    assert len(server.requests) == 3
    assert time.perf_counter() - t0 >= 0.2  # Retry-After was honoured
    assert out[0][0].one_sentence == ANSWER["one_sentence"]


def test_400_is_a_clear_error_without_retry(server):
    server.script = [(400, {"error": {"message": "model 'm' does not support images"}}, {})]
    cap = make_captioner(f"openai:{server.url}#m", variants=1, concurrency=1, backoff_s=0.01)
    try:
        with pytest.raises(CaptionerError, match=r"HTTP 400: model 'm' does not support images"):
            cap.caption(_tiles()[:1])
    finally:
        cap.close()
    assert len(server.requests) == 1


def test_retries_exhausted_and_unreachable_server(server):
    server.script = [(500, {"error": "boom"}, {})] * 3
    cap = make_captioner(f"openai:{server.url}#m", variants=1, max_retries=2, backoff_s=0.01)
    try:
        with pytest.raises(CaptionerError, match="after 3 attempts: HTTP 500"):
            cap.caption(_tiles()[:1])
    finally:
        cap.close()
    port = server.httpd.server_address[1]
    server.close()
    gone = make_captioner(f"openai:http://127.0.0.1:{port}/v1#m", variants=1, max_retries=1, backoff_s=0.01, timeout_s=2)
    try:
        with pytest.raises(CaptionerError, match="failed after 2 attempts"):
            gone.caption(_tiles()[:1])
    finally:
        gone.close()
    server.close = lambda: None  # already closed


def test_unknown_option_is_an_engine_error(server):
    from plugin.core.errors import EngineError

    with pytest.raises(EngineError, match="does not take option.*concurency"):
        make_captioner(f"openai:{server.url}#m", concurency=3)


def test_bad_response_and_empty_answer(server):
    server.script = [(200, {"unexpected": True}, {})]
    cap = make_captioner(f"openai:{server.url}#m", variants=1, concurrency=1)
    try:
        with pytest.raises(CaptionerError, match="without choices"):
            cap.caption(_tiles()[:1])
        # An empty answer never leaves a tile without a caption: the spectral description stands in.
        server.script = [(200, {"choices": [{"message": {"content": ""}}]}, {})]
        (variants,) = cap.caption(_tiles()[1:])
        assert len(variants) == 1 and "open ocean" in variants[0].one_sentence
    finally:
        cap.close()


def test_tile_image_goes_as_jpeg_once_per_tile_and_smaller_than_png():
    """A 400 px textured tile as a JPEG (q90) data URL is well under half its PNG data URL."""
    from plugin.core.captioners.openai_api.image_urls import jpeg_data_url, png_data_url

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:400, 0:400]
    rgb = np.stack([(xx * 0.5 + yy * 0.1) % 256, (yy * 0.4) % 256, (xx * 0.2 + 40) % 256], -1)
    rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255)  # textured like imagery
    tile = make_tile(rgb.transpose(2, 0, 1) * (5000 / 255), has_nir=False, tile_id="big")
    jpeg, png = jpeg_data_url(tile), png_data_url(tile)
    assert jpeg.startswith("data:image/jpeg;base64,") and len(jpeg) < len(png) / 2
