"""Where indexing runs (this computer, a Ray cluster, a Ray job), kept in QgsSettings; the Ray
token in QgsAuthManager.

Only the id of the QgsAuthManager configuration that holds the token is stored. The token itself is
read right before a job (or a "Test cluster") starts and handed to that job's engine worker in its
ENVIRONMENT (RAY_AUTH_TOKEN, RAY_AUTH_MODE=token: Ray reads them when it is imported) -- never in
its command line, the request it is sent, QgsSettings, a log line or the project file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from .settings import api_key_from_auth, load_group, save_group, store_api_key

RUN_ON = ("local", "ray", "ray-job")
RUN_ON_LABELS = {"local": "this computer", "ray": "Ray cluster (address)", "ray-job": "Ray job (dashboard URL)"}


@dataclass
class ClusterOptions:
    run_on: str = "local"
    address: str = ""  # ray: head host:port, or "local" for a private Ray on this computer
    dashboard_url: str = ""  # ray-job: http://head:8265
    shared_dir: str = ""  # ray-job: staging folder both sides mount
    path_map: str = ""  # one "local prefix=cluster prefix" a line
    caption_workers: int = 0  # 0 = one per GPU (CPU clusters: one per 2 CPUs)
    authcfg: str = ""  # QgsAuthManager config holding the Ray token (never the token)

    def pairs(self) -> list[list[str]]:
        """The path map as [[local, cluster], ...]; a clear ValueError for a line without '='."""
        out = []
        for n, line in enumerate(self.path_map.splitlines(), 1):
            if not line.strip():
                continue
            local, sep, remote = line.partition("=")
            if not sep or not local.strip() or not remote.strip():
                raise ValueError(f"path map line {n} {line.strip()!r}: expected LOCAL PREFIX=CLUSTER PREFIX")
            out.append([local.strip(), remote.strip()])
        return out

    def executor_args(self) -> dict[str, Any]:
        """`executor` and `executor_options` of the worker's index request ({} for this computer)."""
        kind = self.run_on if self.run_on in RUN_ON else "local"
        if kind == "local":
            return {}
        opts: dict[str, Any] = {}
        if kind == "ray":
            address = self.address.strip()
            if not address:
                raise ValueError("Run indexing on a Ray cluster: give its address (host:port, or 'local')")
            if address.lower() != "local":
                opts["address"] = address
        else:
            if not self.dashboard_url.strip().startswith(("http://", "https://")):
                raise ValueError("Run indexing as a Ray job: give the dashboard URL (http://head:8265)")
            if not self.shared_dir.strip():
                raise ValueError("Run indexing as a Ray job: give the shared folder both sides reach")
            opts["dashboard_url"] = self.dashboard_url.strip()
            opts["shared_dir"] = self.shared_dir.strip()
        pairs = self.pairs()
        if pairs:
            opts["path_map"] = pairs
        if int(self.caption_workers) > 0:
            opts["caption_workers"] = int(self.caption_workers)
        return {"executor": kind, "executor_options": opts}

    def worker_env(self, base: Optional[dict[str, str]] = None) -> Optional[dict[str, str]]:
        """The environment of a job's engine worker: QGIS's, plus the token when one is chosen
        (None = QGIS's environment unchanged). RuntimeError when the token cannot be read."""
        if self.run_on == "local" or not self.authcfg:
            return None
        token = api_key_from_auth(self.authcfg)
        if not token:
            raise RuntimeError("the Ray token could not be read from the QGIS authentication database "
                               "(missing configuration or master password not entered)")
        env = dict(os.environ if base is None else base)
        env["RAY_AUTH_TOKEN"], env["RAY_AUTH_MODE"] = token, "token"
        return env

    def described(self) -> str:
        if self.run_on == "ray":
            return f"Ray cluster {self.address or '?'}"
        if self.run_on == "ray-job":
            return f"Ray job {self.dashboard_url or '?'}"
        return "this computer"


def load_cluster_options() -> ClusterOptions:
    return load_group(ClusterOptions, "cluster")


def save_cluster_options(opts: ClusterOptions) -> None:
    save_group(opts, "cluster")


def store_ray_token(token: str, authcfg: str = "") -> str:
    """Store the Ray token encrypted in QgsAuthManager; the config id (to keep in settings) is returned."""
    return store_api_key(token, name="Semantic Imagery Search Ray token", authcfg=authcfg)
