"""Set up engine for real: the dialog's QgsTask creates a virtual environment, pip installs into it,
the check reports it, and the engine worker then indexes and searches through that interpreter.

No large download: the requirement set is one tiny wheel built here (installed offline from a
folder) whose .pth file lends the repository venv's packages to the new environment, which is
also created with --system-site-packages (Debian's numpy/GDAL). Everything else is the real path.
"""

from __future__ import annotations

import base64
import hashlib
import sysconfig
import zipfile
from pathlib import Path

import pytest
from qgis.core import QgsSettings

from plugin.core.env import engine_commands
from plugin.core.worker.worker_client import WorkerClient
from plugin.gui.settings.engine_dialog import EngineBanner, EngineDialog, quick_engine_problem
from plugin.qgis_io.engine import SETTINGS_KEY
from plugin.tasks.engine_setup_task import EngineCheckTask, default_engine_dir
from tests.core import rasters
from tests.qgis.plugin_harness import SignalCatcher

pytestmark = pytest.mark.timeout(300)


def _tiny_wheel(folder: Path, site_packages: str) -> str:
    """A real wheel (dist-info, RECORD with hashes) holding one .pth line; returns its requirement name."""
    files = {
        "sis_engine_link.pth": site_packages + "\n",
        "sis_engine_link-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: sis-engine-link\nVersion: 1.0\n",
        "sis_engine_link-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("sis_engine_link-1.0.dist-info/RECORD,,")
    files["sis_engine_link-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "sis_engine_link-1.0-py3-none-any.whl", "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return "sis-engine-link==1.0"


@pytest.fixture()
def engine_setting():
    """Keep the user's engine Python setting as it was."""
    s = QgsSettings()
    before = s.value(SETTINGS_KEY, None)
    yield
    if before is None:
        s.remove(SETTINGS_KEY)
    else:
        s.setValue(SETTINGS_KEY, before)


def test_default_engine_dir_is_in_the_qgis_profile(qgis_app) -> None:
    from qgis.core import QgsApplication

    d = default_engine_dir()
    assert d.startswith(QgsApplication.qgisSettingsDirPath().rstrip("/"))
    assert d.endswith(str(Path("semantic_imagery_search") / "engine"))


def test_setup_task_creates_an_engine_that_indexes_and_searches(qgis_app, qgis_iface, tmp_path: Path,
                                                              engine_setting) -> None:
    QgsSettings().setValue(SETTINGS_KEY, str(tmp_path / "not-there" / "python"))
    assert "not set up" in quick_engine_problem()
    req = _tiny_wheel(tmp_path / "wheels", sysconfig.get_paths()["purelib"])
    env_dir = tmp_path / "profile" / "semantic_imagery_search" / "engine"
    dlg = EngineDialog(qgis_iface.mainWindow(), env_dir=str(env_dir), gpu=None, setup_options={
        "requirements": [req], "install_torch": False, "find_links": str(tmp_path / "wheels"),
        "system_site_packages": True, "python": engine_commands.base_python()})
    assert dlg.variant_combo.currentData() == "cpu"  # no NVIDIA driver given -> CPU build offered
    changed = SignalCatcher(dlg.engine_changed)
    task = dlg.start_setup()
    result = changed.wait(timeout=240, what="engine set-up")[0]

    assert result.get("ok"), result
    python = engine_commands.venv_python(str(env_dir))
    assert result["python"] == python and Path(python).is_file()
    assert result["packages"]["torch"] and result["packages"]["hnswlib"] and result["device"] == "cpu"
    assert QgsSettings().value(SETTINGS_KEY) == python  # the plugin now uses the new engine
    assert quick_engine_problem() is None
    log = dlg.log_view.toPlainText()
    assert "Creating the engine environment" in log and "Successfully installed sis-engine-link-1.0" in log
    assert dlg.progress.value() == 100
    assert "Successfully installed sis-engine-link-1.0" in Path(task.log_path).read_text()

    # the engine worker runs in the new interpreter and does a real index + search
    raster = rasters.north_up(str(tmp_path), width=256, height=256)
    client = WorkerClient(python)
    try:
        client.start()
        report = client.request("index", {"index_dir": str(tmp_path / "idx"), "sources": [raster],
                                          "tiling": {"tile_size": 128}})
        assert report["rasters"][0]["tiles_new"] > 0 and not report["canceled"]
        hits = client.request("search", {"index_dir": str(tmp_path / "idx"), "query": "bright square", "top": 3})
        exe = client.request("ping", {})
    finally:
        client.stop()
    assert 1 <= len(hits) <= 3 and all(Path(h["raster"]).resolve() == Path(raster).resolve() for h in hits)
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert exe["python"] == python  # the worker ran in the environment the task created


def test_checking_a_broken_interpreter_says_so_and_keeps_the_setting(qgis_app, qgis_iface, tmp_path: Path,
                                                                   engine_setting) -> None:
    QgsSettings().setValue(SETTINGS_KEY, "/usr/bin/python3")
    dlg = EngineDialog(qgis_iface.mainWindow(), env_dir=str(tmp_path / "engine"), gpu="NVIDIA T4, driver 550.1")
    assert dlg.variant_combo.currentData() == "cuda" and "NVIDIA T4" in dlg.gpu_label.text()
    changed = SignalCatcher(dlg.engine_changed)
    dlg.python_edit.setText(str(tmp_path / "nope" / "python"))
    dlg.use_button.click()
    result = changed.wait(timeout=60, what="check")[0]
    assert result["error"].startswith("engine Python not found:")
    assert QgsSettings().value(SETTINGS_KEY) == "/usr/bin/python3"
    assert "Check failed: engine Python not found" in dlg.log_view.toPlainText()

    banner = EngineBanner(lambda: None)
    banner.set_check(result)
    assert banner.problem and "engine Python not found" in banner.label.text()
    assert "Set up engine" in banner.label.toolTip() and banner.button.text() == "Set up engine…"
    banner.set_check({"ok": True})
    assert banner.problem is None and not banner.isHidden() and "ready" in banner.label.text()


def test_check_task_reports_the_repo_venv(qgis_app, repo_root: Path) -> None:
    from qgis.core import QgsApplication

    task = EngineCheckTask(str(repo_root / ".venv" / "bin" / "python"))
    done = SignalCatcher(task.check_finished)
    QgsApplication.taskManager().addTask(task)
    result = done.wait(timeout=120, what="check task")[0]
    assert result["ok"], result
    assert result["summary"].startswith("Engine ready: Python 3.")


def _fake_venv(root: Path, cfg: str, packages: tuple[str, ...] = ()) -> str:
    site = root / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (root / "pyvenv.cfg").write_text(cfg)
    for name in packages:
        (site / name).mkdir()
    py = root / "bin" / "python"
    py.parent.mkdir()
    py.write_text("#!/bin/sh\n")
    py.chmod(0o755)
    return str(py)


def test_quick_problem_from_files_only(qgis_app, tmp_path: Path, engine_setting) -> None:
    """At plugin start no interpreter is run: an unfinished set-up or a bare system Python is seen from files."""
    unfinished = _fake_venv(tmp_path / "a", "home = /usr/bin\ninclude-system-site-packages = false\n", ("numpy",))
    assert quick_engine_problem(unfinished) == (
        f"The engine environment at {tmp_path / 'a'} lacks torch, sentence-transformers, hnswlib (set-up not finished?).")
    complete = _fake_venv(tmp_path / "b", "include-system-site-packages = false\n",
                          ("torch", "sentence_transformers", "hnswlib.cpython-311-x86_64-linux-gnu.so"))
    assert quick_engine_problem(complete) is None
    # a venv that also sees system packages cannot be judged from files: the full check tells
    assert quick_engine_problem(_fake_venv(tmp_path / "c", "include-system-site-packages = true\n")) is None
    QgsSettings().remove(SETTINGS_KEY)
    assert "is a system Python" in quick_engine_problem("/usr/bin/python3")
    QgsSettings().setValue(SETTINGS_KEY, "/usr/bin/python3")  # chosen on purpose by the user: trusted
    assert quick_engine_problem("/usr/bin/python3") is None
