"""Real servers on 127.0.0.1 that misbehave on purpose: refusing, stalling, redirecting, empty replies."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

ANSWER = {"one_sentence": "Open ocean with a wooded shore.", "feature": "water in the west; forest in the east",
          "caption": "A coast where dark blue water meets dense trees."}


def closed_port() -> int:
    """A port nobody listens on (bound, then released: connecting is refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class StallServer:
    """Accepts TCP connections and never answers; counts them and notices when the client hangs up."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.accepted = 0
        self.closed_by_client = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        while not self._stop.is_set():
            try:
                if not conn.recv(65536):
                    with self._lock:
                        self.closed_by_client += 1
                    return
            except socket.timeout:
                continue
            except OSError:
                with self._lock:
                    self.closed_by_client += 1
                return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for c in self._conns:
            c.close()


Reply = tuple[int, dict[str, str], bytes]


class ScriptedServer:
    """An HTTP server whose reply to each request is decided by `respond(method, path, headers)`.

    Default: `GET /v1/models` lists `models` (one model "m" unless given), `GET /api/tags` answers
    `tags` (Ollama's native list; 404 unless given), `POST .../chat/completions` answers ANSWER,
    with `n` choices when `honour_n` (as vLLM does), a 400 for `n` > 1 when `refuse_n`, else one
    choice (as Ollama does).
    Every request is recorded as (method, path, lower-cased headers), and its body in `bodies`.
    """

    def __init__(self, respond: Optional[Callable[[str, str, dict[str, str]], Optional[Reply]]] = None, *,
                 honour_n: bool = False, refuse_n: bool = False, models: Optional[list[dict]] = None,
                 tags: Optional[list[dict]] = None) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.bodies: list[bytes] = []
        self.honour_n, self.refuse_n, self.models, self.tags = honour_n, refuse_n, models, tags
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(n) if n else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner.lock:
                    owner.requests.append((self.command, self.path, headers))
                    owner.bodies.append(data)
                reply = respond(self.command, self.path, headers) if respond else None
                status, extra, body = reply if reply is not None else owner.reply(self.command, self.path, data)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reply(self, method: str, path: str, data: bytes) -> Reply:
        if method == "GET" and path.endswith("/api/tags"):
            if self.tags is None:
                return 404, {}, b"404 page not found"
            return 200, {"Content-Type": "application/json"}, json.dumps({"models": self.tags}).encode()
        if method == "GET" and self.models is not None:
            return 200, {"Content-Type": "application/json"}, json.dumps({"object": "list", "data": self.models}).encode()
        n = int(json.loads(data or b"{}").get("n", 1)) if method == "POST" else 1
        if n > 1 and self.refuse_n:
            return 400, {"Content-Type": "application/json"}, b'{"error": {"message": "n must be 1"}}'
        if method == "POST" and self.honour_n:
            content = "```json\n" + json.dumps(ANSWER) + "\n```"
            choices = [{"index": i, "message": {"role": "assistant", "content": content}} for i in range(n)]
            return 200, {"Content-Type": "application/json"}, json.dumps({"choices": choices}).encode()
        return self.default(method, path)

    @staticmethod
    def default(method: str, path: str) -> Reply:
        if method == "GET":
            return 200, {"Content-Type": "application/json"}, json.dumps({"data": [{"id": "m"}]}).encode()
        content = "```json\n" + json.dumps(ANSWER) + "\n```"
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        return 200, {"Content-Type": "application/json"}, body

    def count(self, method: Optional[str] = None) -> int:
        with self.lock:
            return sum(1 for m, _, _ in self.requests if method in (None, m))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
