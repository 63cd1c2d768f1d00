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

REQUIREMENTS_FILE = str(Path(__file__).with_name("engine_requirements.txt"))
#: Optional extras of the engine environment: name -> requirements file.
EXTRAS = {"cluster": str(Path(__file__).with_name("engine_requirements_cluster.txt"))}
#: torch releases tested with the engine (installed alone first, so the right build is chosen).
#: The floor is a security floor: torch < 2.6 loads .bin weights without weights_only protection,
#: and the weights-only unpickler itself was hardened in 2.10 (GHSA-63cw-57p8-fm3p).
TORCH_SPEC = "torch>=2.10,<2.15"
TORCH_INDEX = "https://download.pytorch.org/whl/"
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
                  cuda_tag: str = DEFAULT_CUDA_TAG, find_links: Optional[str] = None) -> list[str]:
    """Install the chosen torch build.

    PyPI's Linux torch is a CUDA build (several GB), so CPU on Linux comes from PyTorch's CPU index;
    Windows and macOS PyPI wheels are the CPU (macOS: CPU + MPS) builds; CUDA builds come from
    PyTorch's `cuXXX` index on Windows and Linux. macOS has no CUDA.
    """
    if variant not in VARIANTS:
        raise EngineEnvError(f"torch build {variant!r}: choose one of {', '.join(VARIANTS)}")
    if variant == "cuda" and platform == "darwin":
        raise EngineEnvError("CUDA is not available on macOS: choose the CPU build (it uses the Apple GPU through MPS)")
    index: Optional[str] = None
    if not find_links:
        if variant == "cuda":
            index = TORCH_INDEX + cuda_tag
        elif platform.startswith("linux"):
            index = TORCH_INDEX + "cpu"
    args = ["--index-url", index] if index else []
    return pip_command(python, [*args, torch_spec], find_links=find_links)


@dataclass(frozen=True)
class SetupStep:
    """One command of the set-up, with the words shown in the task manager."""

    title: str
    argv: tuple[str, ...]
    #: share of the whole set-up's progress this step stands for
    weight: float = 1.0


def setup_plan(env_dir: str, variant: str = "cpu", *, python: Optional[str] = None,
               requirements: Optional[Sequence[str]] = None, install_torch: bool = True,
               system_site_packages: bool = False, find_links: Optional[str] = None,
               upgrade_pip: bool = True, platform: str = sys.platform, torch_spec: str = TORCH_SPEC,
               cuda_tag: str = DEFAULT_CUDA_TAG, extras: Sequence[str] = ()) -> list[SetupStep]:
    """The commands that create the engine environment in `env_dir`, in order.

    `requirements` are pip arguments (default: `-r engine_requirements.txt`); tests pass a tiny set.
    `extras`: optional parts, e.g. ("cluster",) for the Ray executor (ray[data] and its pins).
    An existing venv is reused (pip then only installs what is missing or outdated).
    """
    if variant not in VARIANTS:
        raise EngineEnvError(f"torch build {variant!r}: choose one of {', '.join(VARIANTS)}")
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        raise EngineEnvError(f"unknown engine extra(s) {', '.join(unknown)}: choose from {', '.join(EXTRAS)}")
    py = venv_python(env_dir, platform)
    steps = []
    if not os.path.exists(py):
        steps.append(SetupStep("Creating the engine environment", tuple(venv_command(
            python or base_python(), env_dir, system_site_packages=system_site_packages)), 1.0))
    if upgrade_pip and not find_links:
        steps.append(SetupStep("Updating pip", tuple(pip_command(py, ["--upgrade", "pip"])), 1.0))
    if install_torch:
        steps.append(SetupStep(f"Installing torch ({variant.upper()} build)", tuple(torch_command(
            py, variant, platform=platform, torch_spec=torch_spec, cuda_tag=cuda_tag, find_links=find_links)), 6.0))
    reqs = list(requirements) if requirements is not None else ["-r", REQUIREMENTS_FILE]
    if reqs:
        steps.append(SetupStep("Installing the engine's packages", tuple(pip_command(py, reqs, find_links=find_links)), 4.0))
    for name in extras:
        steps.append(SetupStep(f"Installing the {name} extra", tuple(pip_command(py, ["-r", EXTRAS[name]], find_links=find_links)), 2.0))
    return steps
