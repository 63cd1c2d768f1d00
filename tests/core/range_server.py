"""A loopback HTTP server with Range requests, for remote-raster tests (what GDAL's /vsicurl/ needs).

Bound to 127.0.0.1 on a random free port, serves one folder read-only, answers at most `max_requests`
requests (then 503), and is stopped by the test (context manager). Logs every request it saw, so a
test can assert that GDAL really read byte ranges and not the whole file.
"""

from __future__ import annotations

import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeServer:
    def __init__(self, folder: str, max_requests: int = 5000) -> None:
        self.folder = os.path.abspath(folder)
        self.max_requests = max_requests
        self.requests: list[tuple[str, str, str]] = []  # (method, path, range header)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _file(self) -> str | None:
                rel = self.path.split("?", 1)[0].lstrip("/")
                p = os.path.abspath(os.path.join(server.folder, rel))
                return p if p.startswith(server.folder + os.sep) and os.path.isfile(p) else None

            def _serve(self, body: bool) -> None:
                rng = self.headers.get("Range", "")
                with server._lock:
                    server.requests.append((self.command, self.path, rng))
                    over = len(server.requests) > server.max_requests
                if over:
                    self.send_error(503, "request budget exhausted")
                    return
                p = self._file()
                if p is None:
                    self.send_error(404)
                    return
                size = os.path.getsize(p)
                m = _RANGE.match(rng.strip())
                if m and (m.group(1) or m.group(2)):
                    if m.group(1):
                        start = int(m.group(1))
                        end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
                    else:  # suffix range: the last n bytes
                        start, end = max(0, size - int(m.group(2))), size - 1
                    if start >= size or end < start:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    start, end = 0, size - 1
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "image/tiff")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if body:
                    with open(p, "rb") as f:
                        f.seek(start)
                        self.wfile.write(f.read(end - start + 1))

            def do_GET(self) -> None:  # noqa: N802
                self._serve(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def ranged_gets(self) -> int:
        with self._lock:
            return sum(1 for m, _, r in self.requests if m == "GET" and r)

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


#: GDAL settings for talking to the loopback server: no directory listing probes, no proxy, no cache
#: between tests (a new port each time anyway).
GDAL_HTTP_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_USE_HEAD": "NO",
    "GDAL_HTTP_MAX_RETRY": "0",
    "NO_PROXY": "127.0.0.1",
    "no_proxy": "127.0.0.1",
}
