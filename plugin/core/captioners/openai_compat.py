"""The `openai` captioner: an OpenAI-compatible chat-completions server (Ollama, vLLM, LM Studio).

Stdlib `urllib` only (no new dependency). Each (tile, variant) is one request with the tile as a
base64 PNG data URL; requests run on a bounded thread pool. 429, 5xx and connection errors are
retried with exponential backoff (a server's Retry-After wins); any other 4xx stops the job with a
CaptionerError naming the status and the server's own message, since retrying cannot fix it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Sequence

from ..errors import CaptionerError, EngineError
from ..types import CaptionVariant, TileImage
from .base import assemble_variants, fingerprint, tile_image
from .prompts import PROMPT_VERSION, SYSTEM, get_preset, variant_prompt
from .spectral import SpectralCaptioner, spectral_facts

log = logging.getLogger(__name__)

RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


def png_data_url(tile: TileImage) -> str:
    """The tile's RGB as a `data:image/png;base64,...` URL (what vision chat APIs accept)."""
    buf = io.BytesIO()
    tile_image(tile).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _server_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)[:300]
    if err:
        return str(err)[:300]
    return (str(data.get("message") or data.get("detail") or text) if isinstance(data, dict) else text)[:300]


def _retry_after(headers: Any) -> Optional[float]:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class OpenAICaptioner:
    """RSRT captions from an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self, base_url: str, model: str, *, variants: Optional[int] = None, preset: str = "rsrt",
        api_key: Optional[str] = None, batch_size: Optional[int] = None, max_new_tokens: Optional[int] = None,
        concurrency: int = 4, timeout_s: float = 120.0, max_retries: int = 5, backoff_s: float = 1.0,
        max_backoff_s: float = 60.0, temperature: float = 0.7, seed: int = 0, append_facts: bool = True,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise EngineError(f"openai captioner: base URL {base_url!r} must start with http:// or https://")
        p = get_preset(preset)
        self.variants = int(variants or p.variants)
        self.max_new_tokens = int(max_new_tokens or p.max_new_tokens)
        self.base_url, self.model = base_url.rstrip("/"), model
        self.url = self.base_url + "/chat/completions"
        self.api_key = api_key
        self.concurrency = max(1, int(concurrency))
        self.batch_size = int(batch_size or 4 * self.concurrency)
        self.timeout_s, self.max_retries = float(timeout_s), max(0, int(max_retries))
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.temperature, self.seed, self.append_facts = float(temperature), int(seed), bool(append_facts)
        # The server decides the revision; the base URL stands in for it (another server may serve
        # another build of the same model name).
        self.fingerprint = fingerprint(
            "openai", model, self.base_url, PROMPT_VERSION, variants=self.variants, max_tokens=self.max_new_tokens,
            temperature=self.temperature, seed=self.seed, facts=int(self.append_facts),
        )
        self._fallback = SpectralCaptioner(variants=self.variants)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-captioner")

    def request_body(self, image_url: str, k: int) -> dict[str, Any]:
        """The chat-completions request of variant `k` (greedy for k = 0, seeded sampling otherwise)."""
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": [
                    {"type": "text", "text": variant_prompt(k)},
                    {"type": "image_url", "image_url": {"url": image_url}},
                ]},
            ],
            "max_tokens": self.max_new_tokens,
            "temperature": 0.0 if k == 0 else self.temperature,
            "seed": self.seed + k,
            "stream": False,
        }

    def _post(self, body: dict[str, Any]) -> str:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempt = 0
        while True:
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            wait: Optional[float] = None
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    payload = resp.read()
                return self._content(payload)
            except urllib.error.HTTPError as exc:
                body_bytes = exc.read() if exc.fp is not None else b""
                if exc.code not in RETRY_STATUSES:
                    raise CaptionerError(
                        f"openai server {self.url} refused the request: HTTP {exc.code}: {_server_message(body_bytes) or exc.reason}"
                    ) from None
                problem = f"HTTP {exc.code}: {_server_message(body_bytes) or exc.reason}"
                wait = _retry_after(exc.headers)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                problem = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if attempt >= self.max_retries:
                raise CaptionerError(f"openai server {self.url} failed after {attempt + 1} attempts: {problem}")
            if wait is None:
                wait = self.backoff_s * (2**attempt) * (1 + 0.1 * random.random())
            wait = min(wait, self.max_backoff_s)
            log.warning("openai captioner: %s; retrying in %.1f s", problem, wait)
            time.sleep(wait)
            attempt += 1

    def _content(self, payload: bytes) -> str:
        try:
            data = json.loads(payload.decode("utf-8"))
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise CaptionerError(f"openai server {self.url} sent a response without choices[0].message.content: {payload[:200]!r}") from None
        if isinstance(content, list):  # some servers return content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return str(content or "")

    def caption(self, tiles: Sequence[TileImage]) -> list[list[CaptionVariant]]:
        """K variants per tile, in input order; requests run `concurrency` at a time."""
        urls = [png_data_url(t) for t in tiles]
        jobs = [(i, k) for i in range(len(tiles)) for k in range(self.variants)]
        futures = {job: self._pool.submit(self._post, self.request_body(urls[job[0]], job[1])) for job in jobs}
        try:
            answers = {job: f.result() for job, f in futures.items()}
        except BaseException:
            for f in futures.values():
                f.cancel()
            raise
        out = []
        for i, tile in enumerate(tiles):
            facts = spectral_facts(tile) if self.append_facts and tile.has_nir else ""
            texts = [answers[(i, k)] for k in range(self.variants)]
            out.append(assemble_variants(texts, self.variants, self._fallback, tile, facts, source="the server"))
        return out

    def close(self) -> None:
        """Stop the request threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
