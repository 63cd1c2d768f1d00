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

    from plugin.gui.settings.engine_dialog import EngineDialog
    from plugin.gui.settings.settings_dialog import SettingsDialog

    dlg = EngineDialog(qgis_iface.mainWindow(), env_dir=str(tmp_path / "engine"), gpu=None)
    assert "GB" in dlg.size_label.text() and str(tmp_path / "engine") in dlg.size_label.text()
    cuda = dlg.variant_combo.findData("cuda")
    dlg.variant_combo.setCurrentIndex(cuda)
    assert "3.5 GB" in dlg.size_label.text()
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
