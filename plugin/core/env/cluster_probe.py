"""The "Test cluster" check, run in the engine worker (Ray never enters QGIS's Python).

`probe_ray(address)`: attach to a Ray cluster as a driver (token auth from RAY_AUTH_MODE /
RAY_AUTH_TOKEN in this process's environment), read the Ray version on both sides, the alive
nodes, CPUs and GPUs, and disconnect. `probe_jobs(dashboard_url)`: the Jobs REST API's version
endpoint over plain HTTP (no Ray needed here), with the token as the Bearer header Ray's dashboard
expects. Either returns a dict for the dialog; every failure is an EngineError of one line that
never contains the token.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.error
import urllib.request
from typing import Any, Optional

from ..errors import EngineError, first_line

TIMEOUT_S = 10.0


def _one_line(exc: BaseException) -> str:
    text = first_line(exc, 240)
    token = os.environ.get("RAY_AUTH_TOKEN")
    return text.replace(token, "***") if token else text


def _auth() -> str:
    return "token" if os.environ.get("RAY_AUTH_TOKEN") and os.environ.get("RAY_AUTH_MODE") == "token" else "none"


def probe_ray(address: str) -> dict[str, Any]:
    """Versions, nodes, CPUs, GPUs of the cluster at `address` (host:port of the head's GCS)."""
    from ..indexing.cluster.ray_connection import check_reachable, import_ray, is_loopback, loopback_only

    address = (address or "").strip()
    if not address:
        raise EngineError("give the Ray cluster's address (host:port of the head, 6379 by default)")
    check_reachable(address)
    if is_loopback(address):
        loopback_only()
    ray = import_ray()
    out: dict[str, Any] = {"kind": "ray", "address": address, "client_version": ray.__version__, "auth": _auth()}
    if ray.is_initialized():  # pragma: no cover - a worker never holds a connection between requests
        ray.shutdown()
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as exc:
        text = _one_line(exc)
        low = text.lower()
        if "version" in low and "mismatch" in low:
            raise EngineError(f"Ray version mismatch: this engine has Ray {ray.__version__}; {text}") from None
        if "authentication" in low or "token" in low or "unauthenticated" in low:
            hint = "" if out["auth"] == "token" else " (choose the cluster's token in the settings)"
            raise EngineError(f"the cluster refused this engine: {text}{hint}") from None
        raise EngineError(f"cannot attach to the Ray cluster at {address}: {text}") from None
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        res = ray.cluster_resources()
        out.update(nodes=len(nodes), cpus=float(res.get("CPU", 0.0)), gpus=float(res.get("GPU", 0.0)),
                   cluster_version=_cluster_version(ray) or ray.__version__)
    finally:
        ray.shutdown()
    out["mismatch"] = out["cluster_version"] != out["client_version"]
    return out


def _cluster_version(ray: Any) -> Optional[str]:
    """The Ray version the cluster was started with (GCS cluster metadata)."""
    try:
        from ray._private.usage.usage_lib import get_cluster_metadata

        meta = get_cluster_metadata(ray._private.worker.global_worker.node.get_gcs_client())
        return str(meta.get("ray_version") or "") or None
    except Exception:  # noqa: BLE001 - an internal API: fall back to "same as here" (checked at connect)
        return None


def probe_jobs(dashboard_url: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """The Jobs REST API's version endpoint (GET /api/version) of a Ray dashboard, over plain HTTP."""
    url = (dashboard_url or "").strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EngineError(f"dashboard URL {dashboard_url!r}: expected http://host:8265")
    req = urllib.request.Request(url + "/api/version", headers={"Accept": "application/json"})
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the user's dashboard URL
            body = json.loads(resp.read(65536).decode("utf-8", "replace") or "{}")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            hint = "" if token else " (choose the cluster's token in the settings)"
            raise EngineError(f"the Ray dashboard at {url} refused this engine (HTTP {exc.code}){hint}") from None
        raise EngineError(f"the Ray dashboard at {url} answered HTTP {exc.code}: is it a Ray dashboard?") from None
    except (urllib.error.URLError, socket.timeout, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EngineError(f"cannot reach the Ray dashboard at {url}: {_one_line(reason if isinstance(reason, BaseException) else exc)}") from None
    except ValueError:
        raise EngineError(f"the Ray dashboard at {url} did not answer JSON: is it a Ray dashboard?") from None
    cluster = str(body.get("ray_version") or "")
    if not cluster:
        raise EngineError(f"{url}/api/version has no ray_version: is it a Ray dashboard?")
    try:
        import ray  # only to compare versions: job mode itself needs no Ray here

        client: Optional[str] = ray.__version__
    except ImportError:
        client = None
    return {"kind": "ray-job", "dashboard_url": url, "cluster_version": cluster, "client_version": client,
            "auth": "token" if token else "none", "mismatch": bool(client and client != cluster)}
