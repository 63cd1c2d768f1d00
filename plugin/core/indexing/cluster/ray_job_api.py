"""A Ray Jobs REST client in plain HTTP (stdlib urllib): job mode needs no Ray on this machine.

The calls are those of Ray 2.60's dashboard (`ray/dashboard/modules/job/job_head.py`):
GET /api/version, GET|PUT /api/packages/{protocol}/{name}, POST /api/jobs/, GET /api/jobs/{id},
GET /api/jobs/{id}/logs, POST /api/jobs/{id}/stop, DELETE /api/jobs/{id}. The plugin's engine
package reaches the cluster as Ray's own client ships a `py_modules` entry: a zip holding the
package folder, uploaded once under a content-hashed `gcs://_ray_pkg_<hash>.zip` name.

Token auth (a cluster started with RAY_AUTH_MODE=token): the token is read from RAY_AUTH_TOKEN in
this process's environment and sent as `Authorization: Bearer <token>`, the header Ray's dashboard
checks; it never enters a URL, a job's entrypoint or runtime_env, a log line or an error message.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from typing import Any, Optional

from ...errors import EngineError

#: Job states the Jobs API reports; the last three are final.
ACTIVE = ("PENDING", "RUNNING")
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")
#: What never travels to the cluster from the package folder.
EXCLUDES = ("__pycache__", "*.pyc", ".venv", ".git", "tests", "benchmarks", "demo_out", "docs")


class JobsApi:
    def __init__(self, dashboard_url: str, timeout: float = 10.0) -> None:
        url = str(dashboard_url or "").strip().rstrip("/")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise EngineError(f"Ray dashboard URL {dashboard_url!r}: expected http://host:8265")
        self.url, self.timeout = url, float(timeout)

    def _headers(self) -> dict[str, str]:
        token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, body: Any = None, data: Optional[bytes] = None,
                ok404: bool = False) -> Any:
        """One call; JSON answer (None for an empty one, or for 404 when `ok404`). Errors: one line."""
        headers = self._headers()
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and ok404:
                return None
            text = _first_line(exc.read().decode("utf-8", "replace"))
            if exc.code in (401, 403):
                raise EngineError(f"the Ray dashboard at {self.url} refused the request ({exc.code}): {text} -- a"
                                  " token-auth cluster needs RAY_AUTH_TOKEN in the engine's environment") from None
            raise EngineError(f"Ray dashboard {method} {path}: HTTP {exc.code}: {text}") from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise EngineError(f"cannot reach the Ray dashboard at {self.url}: {_first_line(str(why))}") from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    # -- calls ------------------------------------------------------------------------------------
    def version(self) -> dict[str, Any]:
        out = self.request("GET", "/api/version")
        if not isinstance(out, dict) or "ray_version" not in out:
            raise EngineError(f"{self.url} does not answer as a Ray dashboard (no /api/version)")
        return out

    def upload_package(self, folder: str) -> str:
        """Zip `folder` (the folder itself at the zip's top, as `py_modules` wants it), upload it
        unless the cluster has it already; returns its `gcs://` URI (content-hashed)."""
        blob = package_zip(folder)
        name = f"_ray_pkg_{hashlib.sha1(blob).hexdigest()[:16]}.zip"
        path = f"/api/packages/gcs/{name}"
        if not self._exists(path):
            self.request("PUT", path, data=blob)
        return f"gcs://{name}"

    def _exists(self, path: str) -> bool:
        # GET answers 200 with an empty body when the package exists, 404 when not.
        try:
            req = urllib.request.Request(self.url + path, method="GET", headers=self._headers())
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def submit(self, submission_id: str, entrypoint: str, runtime_env: dict[str, Any],
               metadata: Optional[dict[str, str]] = None, entrypoint_num_cpus: float = 0.0) -> str:
        body = {"entrypoint": entrypoint, "submission_id": submission_id, "runtime_env": runtime_env,
                "metadata": metadata or {}, "entrypoint_num_cpus": entrypoint_num_cpus}
        out = self.request("POST", "/api/jobs/", body=body)
        return str((out or {}).get("submission_id") or submission_id)

    def info(self, submission_id: str) -> Optional[dict[str, Any]]:
        """The job's details (status, message, ...), or None when the cluster has no such job."""
        out = self.request("GET", f"/api/jobs/{urllib.parse.quote(submission_id)}", ok404=True)
        return out if isinstance(out, dict) else None

    def status(self, submission_id: str) -> Optional[str]:
        info = self.info(submission_id)
        return str(info.get("status")) if info else None

    def logs(self, submission_id: str) -> str:
        out = self.request("GET", f"/api/jobs/{urllib.parse.quote(submission_id)}/logs", ok404=True)
        return str((out or {}).get("logs") or "") if isinstance(out, dict) else ""

    def last_log_line(self, submission_id: str) -> str:
        try:
            lines = [ln.strip() for ln in self.logs(submission_id).splitlines() if ln.strip()]
        except EngineError:
            return ""
        return lines[-1][:300] if lines else ""

    def stop(self, submission_id: str) -> bool:
        out = self.request("POST", f"/api/jobs/{urllib.parse.quote(submission_id)}/stop", ok404=True)
        return bool((out or {}).get("stopped")) if isinstance(out, dict) else False

    def delete(self, submission_id: str) -> None:
        self.request("DELETE", f"/api/jobs/{urllib.parse.quote(submission_id)}", ok404=True)


def check_dashboard(options: dict[str, Any]) -> dict[str, Any]:
    """The job-mode options' dashboard answers as a Ray dashboard (in seconds; one-line errors)."""
    url = options.get("dashboard_url")
    if not url:
        raise EngineError("the ray-job executor needs the cluster's dashboard URL (--ray-dashboard http://head:8265)")
    if not options.get("shared_dir"):
        raise EngineError("the ray-job executor needs a folder both sides reach for its shards (--shared-dir)")
    if "://" in str(options["shared_dir"]):
        raise EngineError(f"--shared-dir {options['shared_dir']}: job mode needs a folder this computer mounts (a network"
                          " share; the cluster sees it through --path-map), not a URI")
    return JobsApi(str(url)).version()


def package_zip(folder: str) -> bytes:
    """The folder as a deterministic zip (sorted entries, fixed timestamps): same code, same name."""
    folder = os.path.abspath(folder)
    top = os.path.basename(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not _excluded(d))
            for f in sorted(files):
                if _excluded(f):
                    continue
                full = os.path.join(root, f)
                arc = os.path.join(top, os.path.relpath(full, folder)).replace(os.sep, "/")
                zi = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))
                zi.external_attr = 0o644 << 16
                zi.compress_type = zipfile.ZIP_DEFLATED
                with open(full, "rb") as fh:
                    zf.writestr(zi, fh.read())
    return buf.getvalue()


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in EXCLUDES)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return (lines[-1] if lines and lines[0].startswith("Traceback") else (lines[0] if lines else ""))[:300]
