"""HTTP for the `openai` captioner: abortable requests, same-origin credentials, one-line errors.

Still stdlib `urllib` (so proxies from the environment keep working), with three changes:
- every connection is registered while it is open, so cancel (or the first fatal error) can shut
  the sockets down and threads blocked in connect/recv return at once instead of after a timeout;
- a connect timeout separate from the read timeout, so a refused or unreachable server fails in
  seconds while a slow model still gets its time to answer;
- redirects never carry the API key to another origin (scheme, host, port), and a POST that is
  redirected (301/302/307/308) is re-sent as a POST, as an API client expects (303 becomes a GET).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import queue
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import Future
from typing import Any, Callable

log = logging.getLogger(__name__)

#: Headers that identify the user to the server; dropped when a redirect leaves the origin.
CREDENTIAL_HEADERS = ("authorization", "cookie", "x-api-key", "api-key")

_warned_plain_http: set[str] = set()
_warn_lock = threading.Lock()


class Aborted(Exception):
    """The request was shut down from another thread (cancel, or another request's fatal error)."""


class ConnectTimeout(OSError):
    """No TCP/TLS connection within the connect timeout."""


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the scheme's default port filled in."""
    u = urllib.parse.urlsplit(url)
    scheme = (u.scheme or "").lower()
    port = u.port or (443 if scheme == "https" else 80)
    return scheme, (u.hostname or "").lower(), port


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_plain_http_key(url: str) -> bool:
    """Warn once per origin when an API key would travel unencrypted off this machine."""
    scheme, host, port = origin(url)
    if scheme != "http" or is_loopback(host):
        return False
    key = f"{host}:{port}"
    with _warn_lock:
        if key in _warned_plain_http:
            return False
        _warned_plain_http.add(key)
    log.warning("openai captioner: the API key is sent over plain http:// to %s:%d; anyone on the network "
                "path can read it (use https://)", host, port)
    return True


def one_line(body: bytes, limit: int = 200) -> str:
    """A server's error body as one short line: the JSON error message, an HTML page's title, or text."""
    text = body.decode("utf-8", "replace").strip()
    msg = text
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            msg = str(err.get("message") or err)
        elif err:
            msg = str(err)
        else:
            msg = str(data.get("message") or data.get("detail") or text)
    elif re.search(r"<\s*(html|body|head|title|!doctype)", text, re.I):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
        msg = title.group(1) if title else re.sub(r"<[^>]+>", " ", re.sub(r"(?is)<(script|style).*?</\1>", " ", text))
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 3].rstrip() + "..."


def describe(exc: BaseException) -> str:
    """A connection problem in a few words (no exception class soup)."""
    reason: Any = getattr(exc, "reason", exc) if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(reason, ConnectTimeout):
        return str(reason)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "no answer before the read timeout"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror or reason})"
    if isinstance(reason, (ConnectionResetError, http.client.RemoteDisconnected, ConnectionAbortedError)):
        return "the server closed the connection"
    text = " ".join(str(getattr(reason, "strerror", None) or reason).split())
    return text or type(reason).__name__


class Connections:
    """The open connections of one batch of requests, so they can all be shut down at once."""

    def __init__(self) -> None:
        self.aborted = threading.Event()
        self._lock = threading.Lock()
        self._open: set[Any] = set()

    def abort(self) -> None:
        self.aborted.set()
        with self._lock:
            conns = list(self._open)
        for c in conns:
            sock = getattr(c, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _add(self, conn: Any) -> None:
        with self._lock:
            self._open.add(conn)
        if self.aborted.is_set():
            raise Aborted()

    def _discard(self, conn: Any) -> None:
        with self._lock:
            self._open.discard(conn)

    def connection_class(self, base: Any, connect_timeout: float, read_timeout: float) -> Any:
        registry = self

        class Conn(base):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                registry._add(self)
                self.timeout = connect_timeout
                try:
                    base.connect(self)
                except (socket.timeout, TimeoutError):
                    raise ConnectTimeout(f"no connection within {connect_timeout:g} s") from None
                if registry.aborted.is_set():
                    raise Aborted()
                self.sock.settimeout(read_timeout)

            def close(self) -> None:
                registry._discard(self)
                base.close(self)

        return Conn


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    max_redirections = 5

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if req.get_method() == "POST" and code in (301, 302, 307, 308):
            new: Any = urllib.request.Request(
                newurl, data=req.data, method="POST", origin_req_host=req.origin_req_host, unverifiable=True,
                headers={k: v for k, v in req.header_items() if k.lower() not in ("host", "content-length")},
            )
        else:
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin(newurl) != origin(req.full_url):
            for store in (new.headers, new.unredirected_hdrs):
                for name in [k for k in store if k.lower() in CREDENTIAL_HEADERS]:
                    del store[name]
        return new


def open_url(
    req: urllib.request.Request, conns: Connections, connect_timeout: float, read_timeout: float,
) -> tuple[int, bytes, Any]:
    """(status, body, headers) of one request; HTTP errors are returned, not raised.

    Raises Aborted when `conns` was aborted, URLError/OSError for connection problems.
    """
    http_cls = conns.connection_class(http.client.HTTPConnection, connect_timeout, read_timeout)
    https_cls = conns.connection_class(http.client.HTTPSConnection, connect_timeout, read_timeout)

    class Http(urllib.request.HTTPHandler):
        def http_open(self, r: Any) -> Any:
            return self.do_open(http_cls, r)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, r: Any) -> Any:
            return self.do_open(https_cls, r, context=getattr(self, "_context", None))

    opener = urllib.request.build_opener(Http, Https, _RedirectHandler)
    try:
        with opener.open(req, timeout=read_timeout) as resp:
            return int(resp.status), resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read() if exc.fp is not None else b""
        except OSError:
            body = b""
        return int(exc.code), body, exc.headers
    except Aborted:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        if conns.aborted.is_set():
            raise Aborted() from None
        inner = getattr(exc, "reason", None)
        if isinstance(inner, Aborted):
            raise Aborted() from None
        raise


class DaemonPool:
    """A fixed set of daemon threads: a stuck request can never hold up the interpreter's exit
    (ThreadPoolExecutor's threads are joined at exit, which is what made Ctrl-C take 47 s)."""

    def __init__(self, workers: int, name: str) -> None:
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        f: Future = Future()
        self._q.put((f, fn, args))
        return f

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            f, fn, args = item
            if not f.set_running_or_notify_cancel():
                continue
            try:
                f.set_result(fn(*args))
            except BaseException as exc:  # handed to the waiting thread
                f.set_exception(exc)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._q.put(None)


__all__ = ["Aborted", "Connections", "DaemonPool", "describe", "is_loopback", "one_line", "open_url", "origin",
           "warn_plain_http_key"]
