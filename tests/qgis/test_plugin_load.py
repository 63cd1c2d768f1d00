"""The plugin loads like QGIS loads it (classFactory of the root package) and unloads cleanly."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import QEvent
from qgis.PyQt.QtWidgets import QAction, QDockWidget

from scripts.plugin_loader import import_plugin_package as load_package
from scripts.plugin_loader import probe_fresh_load

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("name", "version", "qgisMinimumVersion", "description", "about", "author", "email",
            "repository", "tracker", "category", "icon", "hasProcessingProvider")


def test_metadata_is_complete_and_consistent():
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(ROOT / "metadata.txt", encoding="utf-8")
    meta = cp["general"]
    missing = [k for k in REQUIRED if not meta.get(k, "").strip()]
    assert not missing, missing
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert tuple(int(x) for x in meta["qgisMinimumVersion"].split(".")) <= (3, 22)
    assert "@" in meta["email"] and meta["repository"].startswith("https://")
    assert meta["tracker"].startswith("https://")
    assert (ROOT / meta["icon"]).is_file()
    assert meta["hasProcessingProvider"].lower() in ("yes", "true")
    assert "TODO" not in meta["about"] and len(meta["about"]) > 80
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{meta["version"]}"' in pyproject


def test_load_and_unload_leave_nothing_behind(qgis_iface, qgis_new_project):
    pkg = load_package()
    main = qgis_iface.mainWindow()
    actions_before = set(main.findChildren(QAction))
    docks_before = set(main.findChildren(QDockWidget))
    layers_before = set(QgsProject.instance().mapLayers())
    providers_before = {p.id() for p in QgsApplication.processingRegistry().providers()}

    main.show()  # offscreen: lets the dock really show and hide, as in QGIS
    plugin = pkg.classFactory(qgis_iface)
    plugin.initGui()
    try:
        assert plugin.dock.windowTitle() == "Semantic Imagery Search"
        registry = QgsApplication.processingRegistry()
        assert plugin.provider is not None and registry.providerById(plugin.provider.id()) is not None
        assert len(registry.providerById(plugin.provider.id()).algorithms()) >= 2
        provider_id = plugin.provider.id()
        assert plugin.action in main.findChildren(QAction)
        assert plugin.dock in main.findChildren(QDockWidget)
        plugin.action.trigger()  # the toolbar button opens the dock ...
        assert plugin.dock.isVisible() and plugin.action.isChecked()
        plugin.dock.close()  # ... and closing the dock unchecks the button
        assert not plugin.action.isChecked()
        plugin.show_dock()
        assert plugin.dock.isVisible() and plugin.action.isChecked()
    finally:
        dock = plugin.dock
        plugin.unload()
    QgsApplication.processEvents()
    QgsApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)  # deliver deleteLater
    leftover = set(main.findChildren(QAction)) - actions_before
    assert not leftover, [(a.objectName(), a.text()) for a in leftover]
    assert set(main.findChildren(QAction)) == actions_before
    assert set(main.findChildren(QDockWidget)) == docks_before
    assert set(QgsProject.instance().mapLayers()) == layers_before
    assert QgsApplication.processingRegistry().providerById(provider_id) is None
    assert {p.id() for p in QgsApplication.processingRegistry().providers()} == providers_before
    assert plugin.dock is None and plugin.action is None
    from qgis.PyQt import sip

    assert sip.isdeleted(dock)


def test_loading_imports_nothing_heavy():
    """classFactory + initGui in a fresh QGIS process never imports torch, transformers, rasterio, numpy...

    (How fast it loads is a benchmark, benchmarks/plugin_load_time.py, not a timed test.)
    """
    res = probe_fresh_load()
    assert res["heavy"] == [], res
    assert res["modules"] > 0


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_query_is_refused_without_a_search(qgis_iface, qgis_new_project, bad):
    pkg = load_package()
    plugin = pkg.classFactory(qgis_iface)
    plugin.initGui()
    try:
        w = plugin.dock.search_widget
        fired = []
        w.search_requested.connect(lambda q, o: fired.append(q))
        w.query_edit.setText(bad)
        w.request_search()
        assert fired == [] and "Type a description" in w.info_label.text()
    finally:
        plugin.unload()
