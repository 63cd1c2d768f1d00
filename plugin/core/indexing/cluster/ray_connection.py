"""This process's connection to a Ray cluster: import Ray with a clear error, keep a loopback cluster
on loopback, check an address answers before Ray waits on it, and `RayConnection` (attach to a cluster
or start a private one; close undoes only what it did). Used by the `ray` executor, the settings'
cluster probe and job mode's package upload.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

from ...errors import EngineError, first_line


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise EngineError(f"the ray executor needs ray[data] in the engine environment (the 'cluster' extra): {exc}") from None
    return ray


def loopback_only() -> None:
    """A local cluster listens on 127.0.0.1 only (a Ray head runs whatever code reaches it)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by Ray and by the processes it starts
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # Ray was imported before the variable was set
    except (ImportError, AttributeError):  # pragma: no cover - a Ray without this switch
        pass


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"Ray address {address!r}: expected host:port (the head's GCS port, 6379 by default)")
    return host.strip("[]"), int(port)


def is_loopback(address: str) -> bool:
    host = _host_port(address)[0]
    return host == "localhost" or host.startswith("127.") or host == "::1"


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Ray retries an unreachable head for minutes; say so in seconds instead."""
    import socket

    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise EngineError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def plugin_package_dir() -> str:
    """The top package this module lives in, shipped to the cluster so workers can import the stages."""
    import importlib

    top = __name__.split(".")[0]
    return os.path.dirname(os.path.abspath(str(importlib.import_module(top).__file__)))


class RayConnection:
    """This process's connection to a Ray cluster, apart from any executor: attach to `address`
    (host:port of the head's GCS; token auth from the environment), or start a private loopback
    cluster; `close` undoes only what `open` did (a connection the caller already had stays open)."""

    def __init__(self, address: Optional[str] = None, *, num_cpus: Optional[int] = None,
                 temp_dir: Optional[str] = None) -> None:
        self.address, self.num_cpus, self.temp_dir = address, num_cpus, temp_dir
        self.ray: Any = None
        self.owns_cluster = self.connected = False

    def open(self) -> Any:
        """Connect (or start the private cluster); returns the `ray` module. One-line EngineError on failure."""
        address = self.address
        if address:
            check_reachable(address)
        if not address or is_loopback(address):
            loopback_only()  # else Ray would turn 127.0.0.1 into this machine's network address
        self.ray = ray = import_ray()
        if ray.is_initialized():  # the caller's connection, left open by close()
            return ray
        # Only the package's code travels (a plugin folder that is a checkout also holds a venv).
        env = {"py_modules": [plugin_package_dir()],
               "excludes": ["__pycache__", "*.pyc", ".venv", ".git", "tests", "benchmarks", "demo_out", "docs"]}
        try:
            if address:
                ray.init(address=address, runtime_env=env, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=int(self.num_cpus or os.cpu_count() or 2), include_dashboard=False, runtime_env=env,
                         log_to_driver=False, logging_level=logging.WARNING, _temp_dir=self.temp_dir)
                self.owns_cluster = True
        except Exception as exc:  # connection refused, auth, version mismatch: one line
            hint = " (a token-auth cluster needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN here too)" if address else ""
            raise EngineError(f"cannot start or reach the Ray cluster{' at ' + address if address else ''}: "
                              f"{first_line(exc)}{hint}") from None
        self.connected = True
        return ray

    def close(self) -> None:
        if self.connected:
            self.connected = False
            try:
                self.ray.shutdown()
            except Exception:  # pragma: no cover - already gone
                pass
