"""A real local Ray head for tests (loopback only, random ports, token auth), and the process helpers
that check a test leaves no Ray process behind. Used by the Ray executor and job-mode test modules.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def ray_head(prefix: str, *, dashboard: bool = False, env: dict | Callable[[str], dict] | None = None,
             stop_wait_s: float = 3,
             ready: Callable[[dict], bool] | None = None) -> Iterator[dict]:
    """`ray start --head --block` on 127.0.0.1 with random ports and a fresh auth token; yields
    {address, port, url (dashboard, or None), token, tmp, env}. `env` adds to the cluster's environment
    (a callable gets the cluster's temp folder first). `ready(info)` says when it serves
    (default: the GCS port answers). On exit the head is stopped and every process it started killed."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray's unix socket paths are length-limited
    port = free_port()
    token = secrets.token_hex(16)
    extra = env(tmp) if callable(env) else (env or {})
    full_env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, **CLUSTER_ENV, **extra)
    args = [RAY, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
            f"--temp-dir={tmp}", "--disable-usage-stats"]
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


def as_numpy_batch(batch: dict) -> dict:
    """What Ray Data hands a numpy-format UDF: one object array per column (to call stages without Ray)."""
    out = {}
    for k, v in batch.items():
        arr = np.empty(len(v), dtype=object)
        arr[:] = list(v)
        out[k] = arr
    return out
