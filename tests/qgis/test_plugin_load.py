"""The plugin loads like QGIS loads it (classFactory of the root package) and unloads cleanly."""

from __future__ import annotations

import configparser
import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import QEvent
from qgis.PyQt.QtWidgets import QAction, QDockWidget

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "semantic_imagery_search"
REQUIRED = ("name", "version", "qgisMinimumVersion", "description", "about", "author", "email",
            "repository", "tracker", "category", "icon", "hasProcessingProvider")


def load_package():
    """Import the repository root as the package QGIS would see (folder name = package name)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = mod
    spec.loader.exec_module(mod)
    return mod


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


def test_load_is_fast_and_imports_nothing_heavy():
    """classFactory + initGui in a fresh interpreter: <= 0.5 s and no torch / transformers / rasterio."""
    code = textwrap.dedent(f"""
        import importlib.util, json, os, sys, time
        from qgis.core import QgsApplication
        from qgis.gui import QgsMapCanvas
        from qgis.PyQt.QtWidgets import QMainWindow
        app = QgsApplication([], True); app.initQgis()
        from unittest.mock import MagicMock
        win = QMainWindow(); canvas = QgsMapCanvas(win)
        iface = MagicMock(); iface.mainWindow.return_value = win; iface.mapCanvas.return_value = canvas
        before = set(sys.modules)
        t0 = time.perf_counter()
        spec = importlib.util.spec_from_file_location("{PACKAGE}", r"{ROOT / '__init__.py'}",
                                                      submodule_search_locations=[r"{ROOT}"])
        mod = importlib.util.module_from_spec(spec); sys.modules["{PACKAGE}"] = mod; spec.loader.exec_module(mod)
        plugin = mod.classFactory(iface); plugin.initGui()
        dt = time.perf_counter() - t0
        heavy = sorted(m for m in set(sys.modules) - before
                       if m.split(".")[0] in ("torch", "transformers", "sentence_transformers", "rasterio", "hnswlib"))
        plugin.unload()
        print(json.dumps({{"seconds": dt, "heavy": heavy}}))
    """)
    import json

    env = {**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"}
    runs = []
    for _ in range(3):  # best of 3 fresh processes: the machine is shared, a busy neighbour is not the plugin
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["heavy"] == [], res
        runs.append(res["seconds"])
        if res["seconds"] <= 0.5:
            break
    assert min(runs) <= 0.5, runs


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
