"""The `openai` captioner: an OpenAI-compatible chat-completions server (Ollama, vLLM, LM Studio).

Stdlib `urllib` only (no new dependency). The tile goes as a base64 JPEG (q90) data URL (a 400 px
tile: ~130 KB instead of ~560 KB as PNG), encoded once per tile, and over the wire twice per tile
whatever K: variant 0 is one greedy request, variants 1..K-1 one sampled request asking for
`n = K-1` choices (vLLM and the OpenAI API honour `n`). A server that ignores `n` (Ollama answers one
choice) or refuses it gets one request per missing variant from then on (`variant_requests="each"`
asks for that from the start, each variant with its own focus wording, as before). Requests run
on a bounded thread pool. 429, 5xx and connection errors are
retried with exponential backoff (a server's Retry-After wins); any other 4xx stops the job with a
CaptionerError naming the status and the server's own message, since retrying cannot fix it.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from typing import Any, Callable, Optional, Sequence

from ...errors import Canceled, CaptionerError, EngineError
from ...types import CancelFn, CaptionVariant, TileImage, never_canceled
from ..base import assemble_variants, fingerprint
from ..prompts import PROMPT_VERSION, SYSTEM, get_preset, sampled_prompt, variant_prompt
from ..spectral import SpectralCaptioner, spectral_facts
from .image_urls import jpeg_data_url
from .openai_http import Aborted, Connections, DaemonPool, describe, one_line, open_url, warn_plain_http_key
from .openai_identity import models_identity, native_root, ollama_identity

log = logging.getLogger(__name__)

RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}
#: A server that does not accept the connection within this is down (settable: connect_timeout_s).
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: All K variants of one tile, retries included, must be answered within this (tile_deadline_s).
DEFAULT_TILE_DEADLINE_S = 120.0
#: The server check: attempts on connection errors, first backoff (doubling), read timeout.
CHECK_ATTEMPTS = 4
CHECK_BACKOFF_S = 0.5
CHECK_READ_TIMEOUT_S = 10.0
#: How often the waiting thread looks at cancel, deadlines and retry messages.
POLL_S = 0.1


#: How the K variants of a tile are asked for (see the module docstring).
VARIANT_REQUESTS = ("n", "each")


class _NRefused(Exception):
    """The server answered a request with `n` > 1 with a 400/422: ask one variant per request."""


#: What a server's 400/422 to a request with `n` > 1 says when `n` itself is the problem ("n must be 1",
#: `"param": "n"`, "only one choice", "best_of"). Any other 400 there (e.g. "model does not support
#: images") is the request's real error: falling back to one request per variant would hide it.
_N_REFUSAL = re.compile(rb"\bn\b|\bchoices?\b|best_of", re.IGNORECASE)


def _about_n(body: bytes) -> bool:
    """Whether a refusal of an `n` > 1 request is about `n` (an empty body is taken to be)."""
    return not body.strip() or bool(_N_REFUSAL.search(body))


def _server_message(body: bytes) -> str:
    return one_line(body)


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
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, tile_deadline_s: float = DEFAULT_TILE_DEADLINE_S,
        revision: Optional[str] = None, variant_requests: str = "n",
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
        self.connect_timeout_s = _positive("connect_timeout_s", connect_timeout_s)
        self.tile_deadline_s = _positive("tile_deadline_s", tile_deadline_s)
        if variant_requests not in VARIANT_REQUESTS:
            raise EngineError(f"openai captioner: variant_requests must be one of {', '.join(VARIANT_REQUESTS)},"
                              f" got {variant_requests!r}")
        self.variant_requests = variant_requests
        self.revision = revision
        self._fingerprint: Optional[str] = None
        #: Whether the server honours `n` (None: not known yet).
        self.n_honoured: Optional[bool] = None
        if api_key:
            warn_plain_http_key(self.base_url)
        self._fallback = SpectralCaptioner(variants=self.variants)
        self._pool = DaemonPool(self.concurrency, "openai-captioner")
        self._status: Callable[[str], None] = lambda message: None
        self._is_canceled: CancelFn = never_canceled
        self._note: Optional[str] = None  # latest retry message, reported by the waiting thread

    @property
    def fingerprint(self) -> str:
        """The cache key: the model and what the server reports about it (asked once), never the
        server's URL, so a pool of servers behind a load balancer, a moved server or a new port keep
        the cache. `revision`, when given, is used instead of asking (e.g. to tell quantisations of
        one model name apart on a server that reports nothing)."""
        if self._fingerprint is None:
            params: dict[str, Any] = {}
            if self.variant_requests == "n" and self.variants > 1:
                params["requests"] = "n"  # sampled variants share one wording: not the per-variant captions
            self._fingerprint = fingerprint(
                "openai", self.model, self.revision or self.server_identity(), PROMPT_VERSION, variants=self.variants,
                max_tokens=self.max_new_tokens, temperature=self.temperature, seed=self.seed,
                facts=int(self.append_facts), **params,
            )
        return self._fingerprint

    def server_identity(self) -> str:
        """What the server says about the model (`root=...` from vLLM, `digest=...` from Ollama; "" if
        it says nothing). A server that is down fails here, as in `check_server`. Asked in the
        calling thread (bounded by the check's timeouts), so it works before `bind` and after `close`."""
        try:
            return self._identity(Connections())
        except Aborted:  # pragma: no cover - nobody aborts these connections
            raise CaptionerError(f"captioner server {self.base_url}: the model query was interrupted") from None

    def _identity(self, conns: Connections) -> str:
        found = models_identity(self._check(conns), self.model)
        native = native_root(self.base_url)
        if found or native is None:
            return found
        req = urllib.request.Request(native + "/api/tags", headers=self._headers(), method="GET")
        try:
            status, body, _ = open_url(req, conns, self.connect_timeout_s, max(CHECK_READ_TIMEOUT_S, self.connect_timeout_s))
        except (urllib.error.URLError, OSError, http.client.HTTPException):
            return ""  # not Ollama (or no native API): the model name alone
        return ollama_identity(body, self.model) if status == 200 else ""

    def bind(self, status: Callable[[str], None], is_canceled: CancelFn) -> None:
        """Where retry messages go (the job's progress line) and how cancel is asked for."""
        self._status, self._is_canceled = status, is_canceled

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def request_body(self, image_url: str, k: int, n: int = 1) -> dict[str, Any]:
        """The chat-completions request of variant `k` (greedy for k = 0, seeded sampling otherwise);
        with `n` > 1, the request for `n` sampled variants from k on."""
        text = variant_prompt(k) if k == 0 or self.variant_requests == "each" else sampled_prompt()
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": image_url}},
                ]},
            ],
            "max_tokens": self.max_new_tokens,
            "temperature": 0.0 if k == 0 else self.temperature,
            "seed": self.seed + k,
            "stream": False,
        }
        if n > 1:
            body["n"] = int(n)
        return body

    # -- the server check ---------------------------------------------------------------------

    def check_server(self) -> None:
        """`GET <base>/models` before anything is loaded: a server that is down, refuses the key or
        never answers fails the job in seconds, with one line saying which."""
        conns = Connections()
        future = self._pool.submit(self._check, conns)
        self._wait({future: -1}, conns, {})

    def _check(self, conns: Connections) -> Optional[bytes]:
        """The `/models` answer (None when the server does not list its models)."""
        url = self.base_url + "/models"
        read_timeout = max(CHECK_READ_TIMEOUT_S, self.connect_timeout_s)
        for attempt in range(1, CHECK_ATTEMPTS + 1):
            req = urllib.request.Request(url, headers=self._headers(), method="GET")
            try:
                status, body, _ = open_url(req, conns, self.connect_timeout_s, read_timeout)
            except (socket.timeout, TimeoutError):
                raise CaptionerError(
                    f"captioner server {self.base_url} accepted the connection but sent no answer to GET /models "
                    f"within {read_timeout:g} s"
                ) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                problem = describe(exc)
            else:
                if status in (401, 403):
                    what = "refused the API key" if self.api_key else "needs an API key (--api-key-env)"
                    raise CaptionerError(f"captioner server {self.base_url} {what}: HTTP {status}: {_server_message(body)}")
                if status < 500 or status == 501:  # up (404, 501: it does not list its models)
                    return body if 200 <= status < 300 else None
                problem = f"HTTP {status}: {_server_message(body)}"
            if attempt == CHECK_ATTEMPTS:
                raise CaptionerError(f"captioner server {self.base_url} is not reachable after {attempt} attempts: {problem}")
            self._note = f"waiting for the captioner server (attempt {attempt + 1} of {CHECK_ATTEMPTS}): {problem}"
            if conns.aborted.wait(CHECK_BACKOFF_S * 2 ** (attempt - 1)):
                raise Aborted()
        raise AssertionError("unreachable")  # pragma: no cover

    # -- captioning -----------------------------------------------------------------------------

    def _post(self, body: dict[str, Any], tile: int, starts: dict[int, float], conns: Connections) -> list[str]:
        """The answers (one per choice) to one request, retried on transient errors."""
        data = json.dumps(body).encode("utf-8")
        deadline = starts.setdefault(tile, time.monotonic()) + self.tile_deadline_s
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._deadline_error()
            req = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            wait: Optional[float] = None
            try:
                status, payload, headers = open_url(req, conns, self.connect_timeout_s, min(self.timeout_s, remaining))
            except (socket.timeout, TimeoutError):
                if time.monotonic() >= deadline - 0.05:
                    raise self._deadline_error() from None
                problem = f"no answer within {min(self.timeout_s, remaining):g} s"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                problem = describe(exc)
            else:
                if 200 <= status < 300:
                    return self._contents(payload)
                if status in (400, 422) and int(body.get("n", 1)) > 1 and _about_n(payload):
                    raise _NRefused(_server_message(payload))
                if status not in RETRY_STATUSES:
                    raise CaptionerError(f"openai server {self.url} refused the request: HTTP {status}: {_server_message(payload)}")
                problem = f"HTTP {status}: {_server_message(payload)}"
                wait = _retry_after(headers)
            if attempt == attempts:
                raise CaptionerError(f"openai server {self.url} failed after {attempt} attempts: {problem}")
            if wait is None:
                wait = self.backoff_s * (2 ** (attempt - 1)) * (1 + 0.1 * random.random())
            wait = max(0.0, min(wait, self.max_backoff_s, deadline - time.monotonic()))
            self._note = f"waiting for the captioner server (attempt {attempt + 1} of {attempts}): {problem}"
            log.debug("openai captioner: %s; retrying in %.1f s", problem, wait)
            if conns.aborted.wait(wait):
                raise Aborted()
        raise AssertionError("unreachable")  # pragma: no cover

    def _deadline_error(self) -> CaptionerError:
        return CaptionerError(
            f"openai server {self.url} did not caption a tile within {self.tile_deadline_s:g} s "
            "(raise the tile deadline for a slow server: --tile-deadline)"
        )

    def _contents(self, payload: bytes) -> list[str]:
        """Every choice's message content, in choice order (choices[i].index when given)."""
        try:
            data = json.loads(payload.decode("utf-8"))
            choices = sorted(data["choices"], key=lambda c: int(c.get("index", 0)) if isinstance(c, dict) else 0)
            contents = [c["message"]["content"] for c in choices]
            if not contents:
                raise IndexError
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            what = "an empty response" if not payload.strip() else f"a response without choices[0].message.content: {one_line(payload, 120)}"
            raise CaptionerError(f"openai server {self.url} sent {what}") from None
        out = []
        for content in contents:
            if isinstance(content, list):  # some servers return content parts
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            out.append(str(content or ""))
        return out

    def _sampled(self, image_url: str, tile: int, starts: dict[int, float], conns: Connections) -> list[str]:
        """Variants 1..K-1 of one tile: one request with `n = K-1` while the server honours `n`,
        then one request per variant still missing."""
        want = self.variants - 1
        got: list[str] = []
        if want > 1 and self.n_honoured is not False:
            try:
                got = self._post(self.request_body(image_url, 1, n=want), tile, starts, conns)[:want]
            except _NRefused as exc:
                log.info("openai captioner: the server refused n=%d (%s); one request per variant", want, exc)
                self.n_honoured = False
            else:
                if len(got) < want and self.n_honoured is None:
                    log.info("openai captioner: the server answered %d of n=%d choices; one request per variant",
                             len(got), want)
                self.n_honoured = len(got) >= want
        for k in range(1 + len(got), self.variants):
            got.append(self._post(self.request_body(image_url, k), tile, starts, conns)[0])
        return got

    def _wait(self, futures: dict[Future, int], conns: Connections, starts: dict[int, float]) -> None:
        """Wait for `futures` (value = tile index) while honouring cancel and the tile deadline.

        The first failure aborts every other request of the batch (their sockets are shut down),
        so nothing keeps retrying or printing after the error; cancel returns within ~0.1 s.
        """
        pending = set(futures)
        open_per_tile: dict[int, int] = {}
        for t in futures.values():
            open_per_tile[t] = open_per_tile.get(t, 0) + 1
        try:
            while pending:
                done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
                for f in done:
                    exc = f.exception()
                    if exc is not None and not isinstance(exc, Aborted):
                        raise exc
                    open_per_tile[futures[f]] -= 1
                note, self._note = self._note, None
                if note:
                    self._status(note)
                if self._is_canceled():
                    raise Canceled()
                now = time.monotonic()
                if any(n > 0 and now > starts.get(t, now) + self.tile_deadline_s + 1.0 for t, n in open_per_tile.items()):
                    raise self._deadline_error()
        except BaseException:
            conns.abort()
            for f in futures:
                f.cancel()
            raise

    def caption(self, tiles: Sequence[TileImage]) -> list[list[CaptionVariant]]:
        """K variants per tile, in input order; requests run `concurrency` at a time."""
        urls = [jpeg_data_url(t) for t in tiles]  # once per tile, shared by its requests
        conns, starts = Connections(), {}  # type: ignore[var-annotated]
        futures: dict[tuple[int, int], Future] = {}
        for i in range(len(tiles)):
            futures[(i, 0)] = self._pool.submit(self._post, self.request_body(urls[i], 0), i, starts, conns)
            if self.variants > 1 and self.variant_requests == "n":
                futures[(i, 1)] = self._pool.submit(self._sampled, urls[i], i, starts, conns)
            else:
                for k in range(1, self.variants):
                    futures[(i, k)] = self._pool.submit(self._post, self.request_body(urls[i], k), i, starts, conns)
        self._wait({f: job[0] for job, f in futures.items()}, conns, starts)
        answers = {job: f.result() for job, f in futures.items()}
        out = []
        for i, tile in enumerate(tiles):
            facts = spectral_facts(tile) if self.append_facts and tile.has_nir else ""
            if self.variant_requests == "n":
                texts = answers[(i, 0)][:1] + (answers[(i, 1)] if self.variants > 1 else [])
            else:
                texts = [answers[(i, k)][0] for k in range(self.variants)]
            out.append(assemble_variants(texts, self.variants, self._fallback, tile, facts, source="the server"))
        return out

    def close(self) -> None:
        """Stop the request threads (daemon threads: a stuck one never delays the exit)."""
        self._pool.shutdown()


def _positive(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise EngineError(f"openai captioner: {name} must be a number of seconds, got {value!r}") from None
    if not v > 0:
        raise EngineError(f"openai captioner: {name} must be positive, got {value!r}")
    return v
