"""What setting up the engine runs: the interpreter to start from, the venv, pip and torch commands
(exact argv lists, tested), the ordered plan of steps, and the clean environment for child
interpreters. Composes commands only; `engine_env.py` runs them and checks the result."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import EngineError

#: The ranges the engine is known to work with (what `make lock` resolves; never installed directly).
REQUIREMENTS_FILE = str(Path(__file__).with_name("engine_requirements.txt"))
#: Optional extras of the engine environment: name -> requirements file (ranges).
EXTRAS = {"cluster": str(Path(__file__).with_name("engine_requirements_cluster.txt"))}
#: What the set-up installs: exact versions with sha256 hashes, for every platform (scripts/lock.py).
#: The cluster lock is the base lock plus Ray, so an engine has one lock or the other.
LOCK_FILE = str(Path(__file__).with_name("engine_lock.txt"))
EXTRA_LOCKS = {"cluster": str(Path(__file__).with_name("engine_lock_cluster.txt"))}
#: The torch release tested with the engine lock, installed in its own step from the route the user
#: chose, which decides the build (CPU or CUDA). Security floor: torch < 2.6 loads .bin weights without
#: weights_only protection, and the weights-only unpickler was hardened in 2.10 (GHSA-63cw-57p8-fm3p).
ENGINE_TORCH = "torch==2.13.0"
TORCH_SPEC = ENGINE_TORCH
TORCH_INDEX = "https://download.pytorch.org/whl/"
#: Where torch comes from: PyTorch's own index (the small CPU build on Linux, CUDA builds), PyPI (or
#: the pip index this computer is set up for: on Linux PyPI's torch is the CUDA build, also run on a
#: CPU), or a folder of wheels (no index at all: every package comes from the folder).
TORCH_SOURCES = ("pytorch", "pypi", "folder")
#: Download sizes in MB of torch 2.13.0's cp311 wheels, measured on 2026-12-08: PyPI's from its simple
#: API's file sizes (the Linux wheel brings its CUDA 13 libraries, about 2.2 GB of the 2.7 GB), the Linux
#: CPU build from the `+cpu` wheel. (source, variant, platform family) -> MB; PyTorch's CUDA builds
#: (cuXXX indexes) were out of reach here, so they have no entry and the dialog gives no figure.
DOWNLOAD_MB = {
    ("pytorch", "cpu", "linux"): 192, ("pypi", "cpu", "linux"): 2740, ("pypi", "cuda", "linux"): 2740,
    ("pytorch", "cpu", "win"): 122, ("pypi", "cpu", "win"): 122,
    ("pytorch", "cpu", "darwin"): 111, ("pypi", "cpu", "darwin"): 111,
}
#: The engine's other packages (the lock without torch), download MB, Linux x86_64 Python 3.11
#: (`pip download -r engine_lock*.txt`, 2026-12-08).
LOCK_DOWNLOAD_MB = {"": 266, "cluster": 430}
#: The engine folder on disk after a set-up (MB; Linux x86_64, Python 3.11, CPU torch, 2026-12-08):
#: (variant, extra) -> MB. Other builds were not measured here (no CUDA machine): the dialog says so.
INSTALLED_MB = {("cpu", ""): 1722, ("cpu", "cluster"): 2288}
#: The ONNX copies of the default text embedder (fp32 query graph + int8 document graph) the first
#: index writes to `onnx_cache_root()` (MB, measured 2026-12-08).
ONNX_CACHE_MB = 148
#: CUDA build of torch installed by default; cu128 wheels exist for torch 2.7+ on Windows and Linux.
DEFAULT_CUDA_TAG = "cu128"
VARIANTS = ("cpu", "cuda")
#: Environment variables QGIS sets for its own Python (Windows: PYTHONHOME/PYTHONPATH) that break
#: any other interpreter started from inside QGIS.
_POISON_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")


class EngineEnvError(EngineError):
    """The engine environment cannot be created, or an interpreter is not usable as the engine."""


def clean_env(extra: Optional[dict] = None) -> dict:
    """The environment for child interpreters: QGIS's Python variables removed, output unbuffered."""
    env = {k: v for k, v in os.environ.items() if k not in _POISON_ENV}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    env.update(extra or {})
    return env


def nvidia_driver(timeout: float = 10.0) -> Optional[str]:
    """"<GPU name>, driver <version>" when `nvidia-smi` is on PATH and answers, else None.

    The driver (not a CUDA toolkit) is all a CUDA torch wheel needs, so its presence decides the
    default build offered to the user.
    """
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    if out.returncode != 0 or not lines:
        return None
    name, _, driver = lines[0].partition(",")
    return f"{name.strip()}, driver {driver.strip()}" if driver else name.strip()


def default_variant(platform: str = sys.platform, gpu: Optional[str] = "detect") -> str:
    """"cuda" when an NVIDIA driver answers (not on macOS, which has no CUDA), else "cpu"."""
    if platform == "darwin":
        return "cpu"
    if gpu == "detect":
        gpu = nvidia_driver()
    return "cuda" if gpu else "cpu"


def venv_python(env_dir: str, platform: str = sys.platform) -> str:
    """The interpreter inside a virtual environment folder."""
    if platform.startswith("win"):
        return os.path.join(env_dir, "Scripts", "python.exe")
    return os.path.join(env_dir, "bin", "python")


def base_python() -> str:
    """An interpreter that can create the venv: this Python, or the one QGIS embeds.

    Inside QGIS `sys.executable` is the QGIS program itself (qgis-bin.exe, QGIS.app), so the
    python executable is looked up in the embedded Python's prefix, then on PATH.
    """
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python") and os.path.isfile(exe):
        return getattr(sys, "_base_executable", None) or exe
    names = ("python.exe", "python3.exe") if sys.platform.startswith("win") else ("python3", "python")
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for prefix in (sys.exec_prefix, sys.base_exec_prefix):
        for sub in ("", "bin", "Scripts"):
            for name in (ver, *names):
                cand = os.path.join(prefix, sub, name)
                if os.path.isfile(cand):
                    return cand
    for name in (ver, "python3", "python"):
        found = shutil.which(name)
        if found:
            return found
    raise EngineEnvError("no Python interpreter found to create the engine environment: install Python 3.9-3.12 "
                         "or choose an existing interpreter in the engine dialog")


def venv_command(python: str, env_dir: str, *, system_site_packages: bool = False) -> list[str]:
    """`python -m venv` (with pip); --system-site-packages only when asked (it lets QGIS's packages in)."""
    argv = [python, "-m", "venv"]
    if system_site_packages:
        argv.append("--system-site-packages")
    return argv + [env_dir]


def pip_command(python: str, args: Sequence[str], *, find_links: Optional[str] = None) -> list[str]:
    """`python -m pip install ...`; with `find_links` pip uses only that folder (offline machines)."""
    argv = [python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check"]
    if find_links:
        argv += ["--no-index", "--find-links", find_links]
    return argv + list(args)


def torch_command(python: str, variant: str, *, platform: str = sys.platform, torch_spec: str = TORCH_SPEC,
                  cuda_tag: str = DEFAULT_CUDA_TAG, find_links: Optional[str] = None, source: str = "pytorch") -> list[str]:
    """Install the chosen torch build from the chosen source.

    PyPI's Linux torch is a CUDA build (about 2.7 GB with its CUDA libraries), so the CPU build on
    Linux comes from PyTorch's CPU index; Windows and macOS PyPI wheels are the CPU (macOS: CPU + MPS)
    builds; CUDA builds come from PyTorch's `cuXXX` index on Windows and Linux. macOS has no CUDA.
    `source="pypi"` is the route for networks that reach only PyPI (or a company mirror of it).
    """
    if variant not in VARIANTS:
        raise EngineEnvError(f"torch build {variant!r}: choose one of {', '.join(VARIANTS)}")
    if source not in TORCH_SOURCES:
        raise EngineEnvError(f"torch source {source!r}: choose one of {', '.join(TORCH_SOURCES)}")
    if variant == "cuda" and platform == "darwin":
        raise EngineEnvError("CUDA is not available on macOS: choose the CPU build (it uses the Apple GPU through MPS)")
    if source == "folder" and not find_links:
        raise EngineEnvError("torch from a folder of wheels: choose the folder that holds the torch wheel")
    if source == "pypi" and variant == "cuda" and platform.startswith("win"):
        raise EngineEnvError("PyPI's torch for Windows is the CPU build: choose PyTorch's index for CUDA, or the CPU build")
    index: Optional[str] = None
    if not find_links and source == "pytorch":
        if variant == "cuda":
            index = TORCH_INDEX + cuda_tag
        elif platform.startswith("linux"):
            index = TORCH_INDEX + "cpu"
    args = ["--index-url", index] if index else []
    return pip_command(python, [*args, torch_spec], find_links=find_links)


def torch_download_mb(source: str, variant: str, platform: str = sys.platform) -> Optional[int]:
    """The measured download of the torch step (MB), or None where it was not measured."""
    fam = "win" if platform.startswith("win") else "darwin" if platform == "darwin" else "linux"
    return DOWNLOAD_MB.get(("pytorch" if source == "folder" else source, variant, fam))


def installed_mb(source: str, variant: str, platform: str = sys.platform, extra: str = "") -> Optional[int]:
    """The measured engine folder size (MB) for a route, or None where it was not measured.

    Linux's CPU build is the same wheel from PyTorch's index or a folder; PyPI's Linux torch is the
    CUDA build, not measured here.
    """
    if not platform.startswith("linux") or (source == "pypi" and variant == "cpu"):
        return None
    return INSTALLED_MB.get((variant, extra))


def onnx_cache_root() -> str:
    """Where the engine keeps ONNX exports of embedders: $SIS_ONNX_CACHE, else <XDG cache>/semantic_imagery_search/onnx."""
    explicit = os.environ.get("SIS_ONNX_CACHE")
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "semantic_imagery_search", "onnx")


def lock_for(extras: Sequence[str] = ()) -> str:
    """The lock file the set-up installs: the cluster lock (a superset) when that extra is asked for."""
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        raise EngineEnvError(f"unknown engine extra(s) {', '.join(unknown)}: choose from {', '.join(EXTRAS)}")
    return EXTRA_LOCKS["cluster"] if "cluster" in extras else LOCK_FILE


def lock_command(python: str, lock: str, *, find_links: Optional[str] = None) -> list[str]:
    """Install a lock exactly: every version pinned, every file checked against its sha256, nothing else."""
    return pip_command(python, ["--require-hashes", "--no-deps", "-r", lock], find_links=find_links)


@dataclass(frozen=True)
class SetupStep:
    """One command of the set-up, with the words shown in the task manager."""

    title: str
    argv: tuple[str, ...]
    #: share of the whole set-up's progress this step stands for
    weight: float = 1.0
    #: an index URL the step needs; the set-up checks it answers before running the step
    needs_url: Optional[str] = None


def setup_plan(env_dir: str, variant: str = "cpu", *, python: Optional[str] = None,
               requirements: Optional[Sequence[str]] = None, install_torch: bool = True,
               system_site_packages: bool = False, find_links: Optional[str] = None,
               upgrade_pip: bool = True, platform: str = sys.platform, torch_spec: str = TORCH_SPEC,
               cuda_tag: str = DEFAULT_CUDA_TAG, extras: Sequence[str] = (), torch_source: str = "pytorch",
               check: bool = True) -> list[SetupStep]:
    """The commands that create the engine environment in `env_dir`, in order.

    The engine's packages come from the lock (exact versions, hashes, no dependency resolution), then
    torch from the chosen source, then `pip check` proves the result is consistent. `requirements`
    replaces the lock with pip arguments (tests pass a tiny set). `extras`: optional parts, e.g.
    ("cluster",) for the Ray executor. An existing venv is reused (pip skips what is installed).
    """
    if variant not in VARIANTS:
        raise EngineEnvError(f"torch build {variant!r}: choose one of {', '.join(VARIANTS)}")
    lock = lock_for(extras)
    py = venv_python(env_dir, platform)
    steps = []
    if not os.path.exists(py):
        steps.append(SetupStep("Creating the engine environment", tuple(venv_command(
            python or base_python(), env_dir, system_site_packages=system_site_packages)), 1.0))
    if upgrade_pip and not find_links:
        steps.append(SetupStep("Updating pip", tuple(pip_command(py, ["--upgrade", "pip"])), 1.0))
    with_extras = f" (with the {', '.join(extras)} extra)" if extras else ""
    if requirements is None:
        steps.append(SetupStep("Installing the engine's packages" + with_extras,
                               tuple(lock_command(py, lock, find_links=find_links)), 4.0))
    elif requirements:
        steps.append(SetupStep("Installing the engine's packages" + with_extras,
                               tuple(pip_command(py, list(requirements), find_links=find_links)), 4.0))
    if install_torch:
        argv = torch_command(py, variant, platform=platform, torch_spec=torch_spec, cuda_tag=cuda_tag,
                             find_links=find_links, source=torch_source)
        url = argv[argv.index("--index-url") + 1] if "--index-url" in argv else None
        steps.append(SetupStep(f"Installing torch ({variant.upper()} build)", tuple(argv), 6.0, needs_url=url))
    if check and requirements is None:
        steps.append(SetupStep("Checking the installed packages", (py, "-m", "pip", "check"), 0.2))
    return steps
