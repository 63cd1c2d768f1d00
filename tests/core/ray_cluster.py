"""A real local Ray head for tests (loopback only, random ports, token auth), and the process helpers
that check a test leaves no Ray process behind. Used by the Ray executor and job-mode test modules.

`SHARED_HEAD` is the session's one head (the `ray_cluster` fixture in tests/core/conftest.py): both
modules use it, so a session starts one head (4-10 s, ~700 MB) instead of one per module; it is
stopped after the last test that uses it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tests.core.range_server import GDAL_HTTP_ENV

ROOT = Path(__file__).resolve().parents[2]
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
#: What every Ray process of these tests gets: loopback only, the repo importable (test captioners),
#: GDAL settings for the loopback Range server.
CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
               "RAY_USAGE_STATS_ENABLED": "0", **GDAL_HTTP_ENV}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pids_under(marker: str) -> set[int]:
    """Processes whose command line names `marker` (the cluster's temp dir) and all their descendants."""
    parents: dict[int, int] = {}
    roots = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    roots.add(int(d))
        except (OSError, IndexError, ValueError):
            continue
    out, frontier = set(roots), set(roots)
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in out}
        out |= frontier
    return out


def alive(pids: set[int]) -> set[int]:
    """The processes of `pids` still running (zombies count as gone)."""
    out = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.add(p)
        except OSError:
            pass
    return out


def actor_pids(marker: str, name: str) -> list[int]:
    """Processes of the cluster under `marker` whose command line names `name` (a Ray actor class)."""
    out = []
    for p in pids_under(marker):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if name.encode() in f.read():
                    out.append(p)
        except OSError:
            pass
    return sorted(out)


def api_get(url: str, token: str | None = None) -> dict:
    """GET a dashboard REST endpoint (JSON), with the token as a Bearer header when given."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"null")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def ray_head(prefix: str, *, dashboard: bool = False, env: dict | Callable[[str], dict] | None = None,
             stop_wait_s: float = 3, num_gpus: int | None = None,
             ready: Callable[[dict], bool] | None = None) -> Iterator[dict]:
    """`ray start --head --block` on 127.0.0.1 with random ports and a fresh auth token; yields
    {address, port, url (dashboard, or None), token, tmp, env}. `env` adds to the cluster's environment
    (a callable gets the cluster's temp folder first). `num_gpus` declares logical GPUs (none are
    needed to schedule on them). `ready(info)` says when it serves (default: the GCS port answers). On exit the head is stopped and every process it started killed."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray's unix socket paths are length-limited
    port = free_port()
    token = secrets.token_hex(16)
    extra = env(tmp) if callable(env) else (env or {})
    full_env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, **CLUSTER_ENV, **extra)
    args = [RAY, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
            f"--temp-dir={tmp}", "--disable-usage-stats"]
    if num_gpus is not None:
        args.append(f"--num-gpus={num_gpus}")
    url = None
    if dashboard:
        dport = free_port()
        url = f"http://127.0.0.1:{dport}"
        args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dport}"]
        args += [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                        "metrics-export-port", "runtime-env-agent-port",
                                                        "ray-client-server-port")]
    else:
        args.append("--include-dashboard=false")
    info = {"address": f"127.0.0.1:{port}", "port": port, "url": url, "token": token, "tmp": tmp, "env": full_env}
    check = ready or (lambda i: port_open(i["port"]))
    log = open(os.path.join(tmp, "head.log"), "w")
    head = subprocess.Popen(args, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if check(info):
                    break
            except OSError:
                pass
            assert head.poll() is None and time.monotonic() < deadline, open(os.path.join(tmp, "head.log")).read()
            time.sleep(0.5)
        yield info
    finally:
        ours = pids_under(tmp)
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(stop_wait_s)  # then whatever is left is killed below
        except subprocess.TimeoutExpired:
            head.kill()
        for p in alive(ours - {os.getpid()}):  # only processes this head started
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


#: The once-only fault markers of `ray_captioners.faulty`, files in the shared head's temp folder.
FAULT_MARKERS = {"RAY9_FAIL_ONCE": "transient", "RAY9_EXIT_ONCE": "exit"}


class SharedHead:
    """The session's one token-auth head, for the executor (driver mode) and job-mode tests alike: its
    dashboard (the Jobs REST API) on 127.0.0.1 where ray[default] is installed, one logical GPU (the
    vLLM stand-in's actors ask for one; the other captioners never do), the fault markers of
    `ray_captioners.faulty` in its folder, and this venv's `python` first on the jobs' PATH.
    Started on first use; `stop()` after the last test that uses it (and at session end)."""

    def __init__(self) -> None:
        self.info: dict | None = None
        self.last_user: str | None = None  # node id of the session's last test that needs the head
        self._stack: contextlib.ExitStack | None = None

    def start(self) -> dict:
        if self.info is None:
            dashboard = importlib.util.find_spec("aiohttp_cors") is not None  # the job server needs ray[default]
            bin_dir = os.path.dirname(sys.executable)

            def env(tmp: str) -> dict:
                return {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1",
                        "TRANSFORMERS_OFFLINE": "1", **{k: os.path.join(tmp, v) for k, v in FAULT_MARKERS.items()}}

            def ready(i: dict) -> bool:
                return bool(api_get(i["url"] + "/api/version", i["token"]).get("ray_version")) if dashboard \
                    else port_open(i["port"])

            stack = contextlib.ExitStack()
            info = stack.enter_context(ray_head("r9s", dashboard=dashboard, env=env, num_gpus=1, ready=ready))
            self.info, self._stack = dict(info, shared=os.path.join(info["tmp"], "shared")), stack
        return self.info

    def stop(self) -> None:
        stack, self._stack, self.info = self._stack, None, None
        if stack is not None:
            stack.close()


SHARED_HEAD = SharedHead()


def as_numpy_batch(batch: dict) -> dict:
    """What Ray Data hands a numpy-format UDF: one object array per column (to call stages without Ray)."""
    out = {}
    for k, v in batch.items():
        arr = np.empty(len(v), dtype=object)
        arr[:] = list(v)
        out[k] = arr
    return out
