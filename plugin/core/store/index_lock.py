"""One writer per index: an OS file lock on `<index>/writer.lock`, naming the job that holds it.

Why an OS lock (flock on POSIX, msvcrt on Windows) and not a pid file: the kernel releases it when
its process dies, however it dies (SIGKILL, power loss of a client on a share), so a lock left by a
killed job is simply taken over by the next one -- it can never refuse forever. The file's content
(pid, host, job, start time) is only there to name the running job in the refusal message. Where the
filesystem has no locks at all (some network shares answer ENOLCK), the content is the lock: it is
taken over when its process is gone (same host) or its heartbeat is older than STALE_S.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Optional

from ..errors import IndexBusyError

__all__ = ["IndexLock", "LOCK_FILE", "default_job"]

LOCK_FILE = "writer.lock"
#: Without OS locks, a holder on another host whose file was not touched for this long is gone.
STALE_S = 600.0
_POLL_S = 0.25
_HELD: dict[str, str] = {}  # folder -> job, for this process (names the job without reading the file)
_HELD_LOCK = threading.Lock()


def default_job() -> str:
    """What this process is doing, for the message another job gets: its command line."""
    argv = [os.path.basename(sys.argv[0] or "python")] + list(sys.argv[1:])
    text = " ".join(argv)
    return text if len(text) <= 160 else text[:157] + "..."


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # type: ignore[attr-defined]
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)  # type: ignore[attr-defined]
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _os_lock(fd: int) -> bool:
    """Try the OS lock without blocking: True = held, False = someone else holds it.
    Raises OSError(ENOLCK/ENOTSUP...) when the filesystem has no locks."""
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
            return True
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLK):
                return False
            raise
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def _os_unlock(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt

        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            pass
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


class IndexLock:
    """The writer lock of one index folder; `acquire()` waits up to `wait_s`, then refuses."""

    def __init__(self, folder: str, job: Optional[str] = None) -> None:
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE)
        self.job = job or default_job()
        self._fd: Optional[int] = None
        self._os = True
        #: True when the lock was taken from a job that had died without releasing it.
        self.took_over = False

    def holder(self) -> dict[str, Any]:
        """What the lock file says about its holder ({} when empty or unreadable)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self, wait_s: float = 0.0) -> IndexLock:
        with _HELD_LOCK:
            if self.folder in _HELD:
                raise IndexBusyError(self._busy_message({"job": _HELD[self.folder], "pid": os.getpid(),
                                                         "host": socket.gethostname()}))
        deadline = time.monotonic() + max(0.0, float(wait_s))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while True:
                if self._try(fd):
                    break
                if time.monotonic() >= deadline:
                    raise IndexBusyError(self._busy_message(self.holder()))
                time.sleep(_POLL_S)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._write_holder()
        with _HELD_LOCK:
            _HELD[self.folder] = self.job
        return self

    def _try(self, fd: int) -> bool:
        if self._os:
            try:
                got = _os_lock(fd)
            except OSError:
                self._os = False  # no locks on this filesystem: the file's content is the lock
            else:
                if got:
                    prev = self.holder()
                    self.took_over = bool(prev.get("pid")) and not prev.get("released")
                return got
        prev = self.holder()
        if prev and not prev.get("released") and self._alive(prev):
            return False
        self.took_over = bool(prev) and not prev.get("released")
        return True

    @staticmethod
    def _alive(holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname():
            return _pid_alive(int(holder.get("pid") or 0))
        return time.time() - float(holder.get("heartbeat") or 0) < STALE_S

    def _write_holder(self, released: bool = False) -> None:
        assert self._fd is not None
        now = time.time()
        data = {"pid": os.getpid(), "host": socket.gethostname(), "job": self.job, "started": now, "heartbeat": now}
        if released:
            data["released"] = True
        raw = json.dumps(data).encode("utf-8")
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, raw)

    def heartbeat(self) -> None:
        """Refresh the file's time stamp (matters only where the filesystem has no locks)."""
        if self._fd is not None and not self._os:
            self._write_holder()

    def release(self, unlink: bool = False) -> None:
        """Let go; `unlink` also removes the file (a first job that failed before creating the index
        leaves nothing behind)."""
        if self._fd is None:
            return
        try:
            try:
                if unlink:
                    os.unlink(self.path)
                else:
                    self._write_holder(released=True)
            except OSError:
                pass
            if self._os:
                _os_unlock(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None
            with _HELD_LOCK:
                _HELD.pop(self.folder, None)

    def _busy_message(self, h: dict[str, Any]) -> str:
        since = ""
        if h.get("started"):
            since = ", since " + time.strftime("%H:%M:%S", time.localtime(float(h["started"])))
        who = f"pid {h.get('pid', '?')} on {h.get('host', '?')}{since}"
        return (f"another job is writing the index at {self.folder}: '{h.get('job') or 'unknown job'}' ({who}); "
                "wait for it to finish or cancel it, then run again (the CLI waits with --wait SECONDS)")

    def __del__(self) -> None:
        # A writer dropped without close() must not keep its index locked for the rest of the process.
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __enter__(self) -> IndexLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
