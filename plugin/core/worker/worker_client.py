"""The QGIS side of the worker protocol, without Qt: start `python -m plugin worker`, send requests,
stream progress, turn error replies back into the engine's exceptions.

Why no Qt: the client is used from QgsTask.run() threads and from tests without QGIS; it needs only
subprocess and two reader threads (stdout lines into a queue, stderr into a bounded tail that explains
a crash). `request` is blocking and one-at-a-time per client (a lock enforces it).
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

from .. import errors
from ..errors import Canceled, EngineError

#: The folder holding the `plugin` package (the plugin's root folder).
PLUGIN_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class WorkerError(EngineError):
    """The worker reported a failure that is not one of the engine's own errors (a bug, a library error)."""

    def __init__(self, message: str, kind: str = "", details: str = "") -> None:
        super().__init__(message)
        self.kind, self.details = kind, details


class WorkerCrashed(EngineError):
    """The worker process died (a model crashed, ran out of memory, or it was killed)."""


def _ignore(_event: dict) -> None:
    pass


def _never() -> bool:
    return False


class WorkerClient:
    """One engine worker process and the requests sent to it."""

    def __init__(self, python: str, *, env: Optional[dict[str, str]] = None, cwd: Optional[str] = None,
                 start_timeout: float = 60.0, cancel_grace: float = 10.0,
                 on_stderr: Optional[Callable[[str], None]] = None) -> None:
        self.python = python
        self.env = env
        self.cwd = cwd or PLUGIN_ROOT
        self.start_timeout = start_timeout
        #: Seconds a canceled request may take to wind down before the process is killed.
        self.cancel_grace = cancel_grace
        self.on_stderr = on_stderr
        self.proc: Optional[subprocess.Popen] = None
        self._lines: queue.Queue[Optional[dict]] = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()
        self._next_id = 0
        self.pid: Optional[int] = None

    # --- life cycle ------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _env(self) -> dict[str, str]:
        env = dict(self.env if self.env is not None else os.environ)
        # QGIS's own interpreter settings must not leak into another Python.
        for name in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__"):
            env.pop(name, None)
        env["PYTHONPATH"] = self.cwd
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env

    def start(self) -> dict[str, Any]:
        """Start the process and wait for its "ready" line; WorkerCrashed if it does not come."""
        if self.alive:
            return {"pid": self.pid}
        if self.proc is not None:  # a dead predecessor: release its pipes
            self._close_pipes(self.proc)
        self._lines = queue.Queue()
        self._stderr_tail.clear()
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # Ctrl-C in a terminal QGIS does not hit the worker
        try:
            self.proc = subprocess.Popen(
                [self.python, "-u", "-m", "plugin", "worker"], cwd=self.cwd, env=self._env(),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs,
            )
        except OSError as exc:
            raise WorkerCrashed(f"cannot start the engine worker with {self.python!r}: {exc.strerror or exc}") from None
        self.pid = self.proc.pid
        threading.Thread(target=self._read_stdout, args=(self.proc, self._lines), daemon=True, name="worker-stdout").start()
        threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True, name="worker-stderr").start()
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                msg = self._lines.get(timeout=0.1)
            except queue.Empty:
                if time.monotonic() > deadline:
                    self.kill()
                    raise WorkerCrashed(f"the engine worker did not start within {self.start_timeout:.0f} s") from None
                continue
            if msg is None:
                raise self._crashed("the engine worker stopped while starting")
            if msg.get("event") == "ready":
                return msg

    def _read_stdout(self, proc: subprocess.Popen, lines: queue.Queue) -> None:
        """Each process gets its own queue, so a dead process's last lines never reach its successor."""
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.strip()
                if not line:
                    continue
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    self._stderr_tail.append(f"(stdout) {line}")
                    continue
                if isinstance(msg, dict):
                    lines.put(msg)
        except (OSError, ValueError):  # the pipe was closed under us: same as end of output
            pass
        lines.put(None)

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                line = line.rstrip()
                if line:
                    self._stderr_tail.append(line)
                    if self.on_stderr is not None:
                        try:
                            self.on_stderr(line)
                        except Exception:  # a logging callback must never break the reader
                            pass
        except (OSError, ValueError):
            pass

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    def _crashed(self, what: str) -> WorkerCrashed:
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
        time.sleep(0.05)  # let the stderr reader catch the last words
        last = [ln for ln in self._stderr_tail if ln.strip()]
        cause = _exit_cause(code)
        hint = f": {last[-1].strip()[:300]}" if last else ""
        return WorkerCrashed(f"{what} ({cause}){hint}")

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to shut down; kill it when it does not within `timeout`."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"cmd": "shutdown"}) + "\n")
                proc.stdin.flush()
                proc.stdin.close()
            except (OSError, ValueError):
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipes(proc)
        self.proc = None

    def kill(self) -> None:
        """Kill the process at once (SIGKILL); the index stays consistent, an update resumes it."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                if sys.platform != "win32":
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except (ProcessLookupError, PermissionError, OSError):
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    @staticmethod
    def _close_pipes(proc: subprocess.Popen) -> None:
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if f is not None:
                    f.close()
            except (OSError, ValueError):
                pass

    # --- requests --------------------------------------------------------------------------
    def _send(self, msg: dict[str, Any]) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            raise self._crashed("the engine worker is not running")
        try:
            proc.stdin.write(json.dumps(msg) + "\n")
            proc.stdin.flush()
        except (OSError, ValueError):
            raise self._crashed("the engine worker stopped reading requests") from None

    def request(self, cmd: str, args: Optional[dict[str, Any]] = None,
                on_event: Callable[[dict], None] = _ignore, is_canceled: Callable[[], bool] = _never) -> Any:
        """Send one request and wait for its result, passing progress events to `on_event`.

        When `is_canceled()` turns true a "cancel" goes to the worker; if the request has not ended
        `cancel_grace` seconds later the process is killed. Either way `errors.Canceled` is raised.
        """
        with self._lock:
            if not self.alive:
                self.start()
            self._next_id += 1
            rid = str(self._next_id)
            self._send({"id": rid, "cmd": cmd, "args": args or {}})
            cancel_at: Optional[float] = None
            while True:
                try:
                    msg = self._lines.get(timeout=0.05)
                except queue.Empty:
                    msg = None
                    if cancel_at is None and is_canceled():
                        if self.cancel_grace <= 0:  # no grace: kill at once, never wait for a reply
                            self.kill()
                            raise Canceled() from None
                        cancel_at = time.monotonic()
                        try:
                            self._send({"cmd": "cancel", "args": {"id": rid}})
                        except WorkerCrashed:
                            raise Canceled() from None
                    elif cancel_at is not None and time.monotonic() - cancel_at > self.cancel_grace:
                        self.kill()
                        raise Canceled() from None
                    if self.proc is not None and self.proc.poll() is None:
                        continue
                    # The process is gone: drain what it said before dying, then report.
                    try:
                        msg = self._lines.get(timeout=1.0)
                    except queue.Empty:
                        msg = None
                if msg is None:
                    if cancel_at is not None:
                        raise Canceled()
                    raise self._crashed(f"the engine worker died during {cmd!r}")
                if msg.get("id") != rid:
                    continue  # a late line of an earlier, abandoned request
                event = msg.get("event")
                if event == "result":
                    return msg.get("result")
                if event == "error":
                    raise _as_exception(msg)
                try:
                    on_event(msg)
                except Exception:  # a progress callback must not lose the reply
                    pass


def _as_exception(msg: dict[str, Any]) -> BaseException:
    kind = str(msg.get("kind") or "")
    text = str(msg.get("message") or kind or "the engine worker failed")
    if kind == "Canceled":
        return Canceled(text)
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, EngineError):
        return cls(text)
    if kind == "ProtocolError":
        return WorkerError(text, kind)
    return WorkerError(f"{kind}: {text}" if kind and kind not in text else text, kind, str(msg.get("details") or ""))


def _exit_cause(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        extra = " -- out of memory?" if -code == getattr(signal, "SIGKILL", 9) else ""
        return f"killed by {name}{extra}"
    return f"exit code {code}"
