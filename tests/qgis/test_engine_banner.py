"""The engine's state in the dock and the set-up dialog (issue 10 item 9): one short banner that
tracks the engine (also when it breaks after start), download size and folder up front, a bar only
while busy, the engine Python in one dialog, and the profile's engine as the fallback interpreter."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from qgis.core import QgsApplication, QgsProject, QgsSettings

from plugin.qgis_io.engine import SETTINGS_KEY, engine_python
from tests.qgis.plugin_harness import SignalCatcher, load_plugin


def test_banner_tracks_an_engine_that_breaks_after_start(qgis_iface, tmp_path: Path):
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'engine exploded' >&2\nexit 3\n")
    broken.chmod(0o755)
    QgsSettings().setValue(SETTINGS_KEY, str(broken))
    QgsProject.instance().clear()
    plugin = load_plugin(qgis_iface)
    try:
        banner, w = plugin.engine_banner, plugin.dock.search_widget
        assert banner.isHidden() and w.search_button.isEnabled()  # nothing to tell from files alone
        catcher = SignalCatcher(plugin.search_ctl.search_finished)
        w.query_edit.setText("water")
        w.request_search()
        _hits, error = catcher.wait(1, 60, "the failing search")
        assert "engine worker" in error
        assert not banner.isHidden() and banner.problem
        assert banner.label.text() == "⚠ Search engine stopped — searching is off"
        assert "exit code 3" in banner.label.toolTip() and "Set up engine" in banner.label.toolTip()
        assert not w.search_button.isEnabled() and not banner.button.isHidden()
        # a passing check turns it green and searching back on
        plugin._on_engine_changed({"ok": True, "summary": "Engine ready: Python 3.11"})
        assert banner.label.text() == "● engine ready" and banner.button.isHidden() and w.search_button.isEnabled()
    finally:
        QgsSettings().remove(SETTINGS_KEY)
        plugin.unload()


def test_setup_dialog_says_size_and_folder_and_shows_a_bar_only_while_busy(qgis_iface, tmp_path: Path):
    from qgis.PyQt.QtWidgets import QDialogButtonBox

    from plugin.core.env import engine_commands as ec
    from plugin.gui.settings.engine_dialog import EngineDialog
    from plugin.gui.settings.settings_dialog import SettingsDialog

    dlg = EngineDialog(qgis_iface.mainWindow(), env_dir=str(tmp_path / "engine"), gpu=None)
    text = dlg.size_label.text()  # Linux, CPU, PyTorch's index: the measured figures
    assert dlg.source_combo.currentData() == "pytorch" and str(tmp_path / "engine") in text
    assert "Downloads about 458 MB with pip (torch 192 MB, the rest 266 MB)" in text and "about 1.7 GB on disk" in text
    assert "148 MB ONNX copy" in dlg.cache_label.text() and ec.onnx_cache_root() in dlg.cache_label.text()
    dlg.variant_combo.setCurrentIndex(dlg.variant_combo.findData("cuda"))  # PyTorch's cu128 build: never measured
    assert dlg.size_label.text().startswith("Downloads torch and the engine's packages with pip")
    assert "not measured" in dlg.size_label.text() and "GB" not in dlg.size_label.text()
    # a network that reaches only PyPI: PyPI's Linux torch is the CUDA build, and the dialog says how big
    dlg.variant_combo.setCurrentIndex(dlg.variant_combo.findData("cpu"))
    dlg.source_combo.setCurrentIndex(dlg.source_combo.findData("pypi"))
    assert "Downloads about 3.0 GB with pip (torch 2.7 GB" in dlg.size_label.text()
    assert dlg.setup_choice() == ("cpu", {"torch_source": "pypi"}) and dlg.folder_row.isHidden()
    # a folder of wheels: Set up engine waits for the folder, then installs from it alone
    dlg.source_combo.setCurrentIndex(dlg.source_combo.findData("folder"))
    assert not dlg.folder_row.isHidden() and not dlg.setup_button.isEnabled()
    assert "downloads nothing" in dlg.size_label.text()
    dlg.folder_edit.setText(str(tmp_path))
    assert dlg.setup_button.isEnabled()
    assert dlg.setup_choice() == ("cpu", {"torch_source": "folder", "find_links": str(tmp_path)})
    dlg.source_combo.setCurrentIndex(dlg.source_combo.findData("pytorch"))
    assert not dlg.setup_button.autoDefault() and not dlg.setup_button.isDefault()
    close = dlg.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Close)
    assert close.isDefault()
    assert dlg.progress.isHidden()
    done = SignalCatcher(dlg.engine_changed)
    dlg.check(str(tmp_path / "missing" / "python"))
    assert not dlg.progress.isHidden() and dlg.progress.maximum() == 0  # busy while checking
    done.wait(1, 60, "the check")
    assert dlg.progress.isHidden()
    # the engine Python lives in that dialog only
    assert not hasattr(SettingsDialog(), "python_edit")
    dlg.close()


def test_cleared_setting_falls_back_to_the_profile_engine(qgis_app):
    QgsSettings().remove(SETTINGS_KEY)
    home = os.path.join(QgsApplication.qgisSettingsDirPath(), "semantic_imagery_search", "engine")
    created = not os.path.exists(home)
    py = os.path.join(home, "bin", "python")
    try:
        os.makedirs(os.path.dirname(py), exist_ok=True)
        Path(py).write_text("#!/bin/sh\n")
        assert engine_python() == py
    finally:
        if created:
            shutil.rmtree(home, ignore_errors=True)
        else:
            os.remove(py)
    assert engine_python() != py


def test_failed_set_up_says_so_and_index_waits_for_a_ready_engine(qgis_iface, tmp_path: Path):
    """A set-up that failed on PyTorch's index read "Installing torch — searching is off", as if still
    installing; and Index with no engine started a worker that could not import numpy."""
    QgsSettings().setValue(SETTINGS_KEY, str(tmp_path / "not-there" / "python"))
    QgsProject.instance().clear()
    plugin = load_plugin(qgis_iface)
    try:
        banner, iw = plugin.engine_banner, plugin.dock.index_widget
        assert banner.label.text() == "⚠ Search engine not set up — searching is off"
        for button in (iw.index_button, iw.update_button):
            assert not button.isEnabled() and button.toolTip().startswith("Not available: The search engine is not set up")
        assert plugin.index_ctl.start_index() is False and plugin.index_ctl.task is None
        failed = {"error": "Installing torch (CPU build) failed: download.pytorch.org (PyTorch's package index) cannot "
                           "be reached from this computer (timed out)", "setup_failed": True}
        plugin._on_engine_changed(failed)
        assert banner.label.text() == "⚠ Engine set-up failed — searching is off"
        assert "download.pytorch.org" in banner.label.toolTip() and not iw.index_button.isEnabled()
        plugin._on_engine_changed({"ok": True, "summary": "Engine ready: Python 3.11"})
        assert iw.index_button.isEnabled() and iw.update_button.isEnabled()
        assert iw.index_button.toolTip().startswith("Caption and embed")
        iw.set_running(True)  # a running job still freezes them
        assert not iw.index_button.isEnabled()
        iw.set_running(False)
    finally:
        QgsSettings().remove(SETTINGS_KEY)
        plugin.unload()


def test_a_new_engine_replaces_the_worker_started_on_the_old_one(qgis_iface, tmp_path: Path, repo_root: Path):
    """The fresh-profile walk: the project's first "info" started a worker on a Python without numpy;
    after Set up engine the dock kept asking that worker, and the rows sat on "…" after indexing."""
    from plugin.gui.session import EngineSession

    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'numpy'\" >&2\nexit 1\n")
    broken.chmod(0o755)
    QgsSettings().setValue(SETTINGS_KEY, str(broken))
    session = EngineSession(qgis_iface, QgsProject.instance())
    try:
        infos: list = []
        session.info_changed.connect(infos.append)
        session.refresh_info()
        old = session.queue.client
        assert old.python == str(broken)
        SignalCatcher(session.queue.busy_changed).wait(timeout=60, what="the failing info call")
        assert not infos, "the broken engine answered nothing"
        QgsSettings().setValue(SETTINGS_KEY, str(repo_root / ".venv" / "bin" / "python"))  # what Set up engine does
        session.refresh_info()
        assert session.queue.client is not old and session.queue.client.python.endswith(".venv/bin/python")
        deadline = __import__("time").monotonic() + 120
        while not infos and __import__("time").monotonic() < deadline:
            QgsApplication.processEvents()
        assert infos and infos[-1]["index_dir"] == session.index_dir()
    finally:
        session.queue.close()
        QgsSettings().remove(SETTINGS_KEY)


def test_a_job_note_is_shown_with_the_outcome_as_a_warning(qgis_iface, tmp_path: Path, monkeypatch):
    """A job whose search file could not be saved finished (its tiles are committed): the dock says
    "Index ready" with the note, as a warning -- not "Task failed" beside "indexed (N tiles)"."""
    import sys

    from qgis.core import Qgis

    QgsProject.instance().clear()
    plugin = load_plugin(qgis_iface)
    ctl_module = sys.modules[type(plugin.index_ctl).__module__]  # the loaded plugin's own copy of the module
    shown: list = []
    monkeypatch.setattr(ctl_module, "report_info", lambda iface, text, level=None, **kw: shown.append((text, level)))
    monkeypatch.setattr(ctl_module, "report_error", lambda *a, **kw: shown.append(("ERROR",) + a[1:]))
    monkeypatch.setattr(ctl_module.QTimer, "singleShot", lambda ms, fn: fn())
    try:
        note = "the search file was not saved (writing the search file x failed verification); every tile is in the index database"
        plugin.index_ctl._on_finished({"rasters": [{"name": "S2", "tiles_new": 320, "tiles_planned": 320}],
                                       "seconds": 23.0, "notes": [note]})
        assert shown and shown[-1][0].startswith("Index ready: 1 raster: 320 tiles captioned") and note in shown[-1][0]
        assert shown[-1][1] == Qgis.Warning and not any(s[0] == "ERROR" for s in shown)
        assert note in plugin.session.last_outcome
    finally:
        plugin.unload()
