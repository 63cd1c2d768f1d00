"""The openai captioner for a pool of servers: a cache key from what the server reports (never its
URL), and each tile's image sent twice whatever the number of variants where the server honours `n`
(vLLM), with a fallback to one request per variant where it does not (Ollama) or refuses it.
Real HTTP servers on 127.0.0.1 (tests/core/loopback_servers.py)."""

from __future__ import annotations

import json

import pytest
from captioner_tiles import FOREST, WATER, fill, make_tile
from loopback_servers import ANSWER, ScriptedServer

from plugin.core.captioners import make_captioner
from plugin.core.captioners.openai_api.image_urls import jpeg_data_url

VLLM = [{"id": "qwen-vl", "object": "model", "created": 1764460000, "owned_by": "vllm",
         "root": "Qwen/Qwen2.5-VL-7B-Instruct", "parent": None, "max_model_len": 8192}]


@pytest.fixture
def servers():
    made: list[ScriptedServer] = []

    def make(**kw) -> ScriptedServer:
        made.append(ScriptedServer(**kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _fp(url: str, model: str, **kw) -> str:
    cap = make_captioner(f"openai:{url}#{model}", variants=3, **kw)
    try:
        return cap.fingerprint
    finally:
        cap.close()


def test_fingerprint_is_what_the_server_reports_never_its_url(servers) -> None:
    a, b = servers(models=VLLM), servers(models=[{**VLLM[0], "created": 1764469999, "max_model_len": 4096}])
    fa, fb = _fp(a.url, "qwen-vl"), _fp(b.url, "qwen-vl")
    assert fa == fb  # another server (another port, restarted, other settings), same weights: same cache
    assert "root=Qwen/Qwen2.5-VL-7B-Instruct" in fa and a.url not in fa and "127.0.0.1" not in fa
    awq = servers(models=[{**VLLM[0], "root": "Qwen/Qwen2.5-VL-7B-Instruct-AWQ"}])
    assert _fp(awq.url, "qwen-vl") != fa  # the same served name over other weights: captioned again
    # Ollama: /v1/models names the model only; the digest of its weights comes from /api/tags.
    tags = [{"name": "llava:7b", "model": "llava:7b", "digest": "8dd30f6b0cb19f555f2c7a7ebda861449ea2cc76bf1f44e262931f45fc81d081"}]
    o1 = servers(models=[{"id": "llava:7b", "object": "model", "created": 1, "owned_by": "library"}], tags=tags)
    o2 = servers(models=[{"id": "llava:7b", "object": "model", "created": 2, "owned_by": "library"}], tags=tags)
    re_pulled = servers(models=[{"id": "llava:7b", "object": "model", "created": 3, "owned_by": "library"}],
                        tags=[{**tags[0], "digest": "0123456789abcdef" * 4}])
    assert _fp(o1.url, "llava:7b") == _fp(o2.url, "llava:7b")
    assert "digest=8dd30f6b0cb19f55" in _fp(o1.url, "llava:7b")
    assert _fp(re_pulled.url, "llava:7b") != _fp(o1.url, "llava:7b")
    assert any(path.endswith("/api/tags") for _, path, _ in o1.requests)
    # A model the server does not list, or a server without a list: the model name alone.
    assert "rev=unknown" in _fp(a.url, "other-model")
    # An explicit revision is used as is: nobody is asked.
    before = len(a.requests)
    assert "rev=q4" in _fp(a.url, "qwen-vl", revision="q4") and len(a.requests) == before


def _tiles():
    half = fill(32, 32, FOREST)
    half[:, :, :16] = fill(32, 16, WATER)
    return [make_tile(half, tile_id="a"), make_tile(fill(24, 24, WATER), has_nir=False, tile_id="b")]


def _caption(url: str, **kw):
    cap = make_captioner(f"openai:{url}#qwen-vl", variants=5, concurrency=2, revision="r", **kw)
    try:
        return cap.caption(_tiles()), cap
    finally:
        cap.close()


def _image_bytes_per_tile(srv: ScriptedServer) -> dict[str, int]:
    """Bytes of each tile's image data URL sent, summed over every request the server got."""
    urls = {t.ref.tile_id: jpeg_data_url(t) for t in _tiles()}
    out = dict.fromkeys(urls, 0)
    for body in srv.bodies:
        if not body:
            continue
        sent = json.loads(body)["messages"][1]["content"][1]["image_url"]["url"]
        for tid, u in urls.items():
            if sent == u:
                out[tid] += len(u)
    return out


def test_the_image_goes_twice_per_tile_where_the_server_honours_n(servers) -> None:
    vllm = servers(models=VLLM, honour_n=True)
    out, cap = _caption(vllm.url)
    assert [len(v) for v in out] == [5, 5] and cap.n_honoured is True
    assert all(v.one_sentence == ANSWER["one_sentence"] and not v.fallback for vs in out for v in vs)
    bodies = [json.loads(b) for b in vllm.bodies if b]
    assert len(bodies) == 4  # per tile: variant 0 greedy, variants 1..4 in one request
    greedy = [b for b in bodies if "n" not in b]
    sampled = [b for b in bodies if "n" in b]
    assert len(greedy) == 2 and all(b["temperature"] == 0.0 and b["seed"] == 0 for b in greedy)
    assert len(sampled) == 2 and all(b["n"] == 4 and b["temperature"] > 0 for b in sampled)
    sizes = {t.ref.tile_id: len(jpeg_data_url(t)) for t in _tiles()}
    assert _image_bytes_per_tile(vllm) == {tid: 2 * n for tid, n in sizes.items()}
    # One request per variant (the earlier way, each with its own wording): the image goes 5 times.
    each = servers(models=VLLM, honour_n=True)
    out_each, _ = _caption(each.url, variant_requests="each")
    assert [len(v) for v in out_each] == [5, 5]
    assert _image_bytes_per_tile(each) == {tid: 5 * n for tid, n in sizes.items()}
    assert len({json.loads(b)["messages"][1]["content"][0]["text"] for b in each.bodies if b}) == 5


@pytest.mark.parametrize("kind", ["ignores", "refuses"])
def test_a_server_that_ignores_or_refuses_n_gets_one_request_per_variant(servers, kind: str) -> None:
    srv = servers(models=VLLM, refuse_n=kind == "refuses")  # Ollama answers one choice whatever n
    out, cap = _caption(srv.url)
    assert [len(v) for v in out] == [5, 5] and cap.n_honoured is False
    assert all(not v.fallback for vs in out for v in vs)
    bodies = [json.loads(b) for b in srv.bodies if b]
    urls = {jpeg_data_url(t): t.ref.tile_id for t in _tiles()}
    seeds: dict[str, list[int]] = {}
    for b in bodies:
        tid = urls[b["messages"][1]["content"][1]["image_url"]["url"]]
        answered = 1 if kind == "ignores" or "n" not in b else 0  # Ollama answers one choice to n
        seeds.setdefault(tid, []).extend([b["seed"]] * answered)
    assert {tid: sorted(v) for tid, v in seeds.items()} == {"a": [0, 1, 2, 3, 4], "b": [0, 1, 2, 3, 4]}
    # At most the first tiles tried n (one per tile in flight); every variant got its own answer.
    assert sum(1 for b in bodies if "n" in b) <= 2
    per_tile = _image_bytes_per_tile(srv)
    sizes = {t.ref.tile_id: len(jpeg_data_url(t)) for t in _tiles()}
    assert all(5 * sizes[t] <= per_tile[t] <= 6 * sizes[t] for t in sizes)


@pytest.mark.parametrize("body, about_n", [
    (b'{"error": {"message": "n must be 1"}}', True),
    (b'{"error": {"message": "invalid value", "param": "n"}}', True),
    (b'{"error": "only one choice is supported"}', True),
    (b"", True),
    (b'{"error": {"message": "model m does not support images"}}', False),
    (b'{"error": {"message": "image too large"}}', False),
])
def test_only_a_refusal_about_n_falls_back_to_one_request_per_variant(body: bytes, about_n: bool) -> None:
    """A 400 to the `n` request that is about something else (the CI run where the sampled request drew
    "does not support images") is the real error, not a reason to retry variant by variant until the
    tile deadline."""
    from plugin.core.captioners.openai_api.openai_compat import _about_n

    assert _about_n(body) is about_n
