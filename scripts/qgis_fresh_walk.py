"""A new user's whole way, in a real QGIS window (run by `qgis --code`, see `make fresh-walk`).

QGIS starts with the release zip unpacked into a brand-new profile (no engine set, nothing indexed)
on the demo project. Through the plugin's own widgets this script: opens the dock (the banner says
the engine is not set up; Index and Update are off), runs *Set up engine…* with torch from PyTorch's
index (on a network that reaches only PyPI this must fail at once, naming the host, and the banner
must say "Engine set-up failed"), runs it again with "PyPI only", indexes the scene with the offline
captioner in the new engine and searches. A PNG of the screen after each step and a line in
`steps.txt` go to $SIS_WALKTHROUGH_OUT; a failed step writes `FAILED: ...` and QGIS exits with 1.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from qgis.core import QgsApplication
from qgis.PyQt.QtGui import QGuiApplication
from qgis.utils import iface, plugins

OUT = Path(os.environ.get("SIS_WALKTHROUGH_OUT", "build/fresh-walk"))
QUERY = os.environ.get("SIS_WALKTHROUGH_QUERY", "beach and sea water along the coast")
#: "pytorch,pypi": try PyTorch's index first (as a user would), then PyPI
SOURCES = os.environ.get("SIS_WALK_SOURCES", "pytorch,pypi").split(",")
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
        time.sleep(0.05)
    return time.monotonic() - t0


def shot(name: str) -> None:
    pump(0.5)
    iface.mapCanvas().refresh()
    pump(1.0)
    screen = QGuiApplication.primaryScreen()
    pixmap = screen.grabWindow(0) if screen is not None else iface.mainWindow().grab()
    pixmap.save(str(OUT / f"{name}.png"))
    note(f"screenshot {name}.png")


def run() -> None:
    win = iface.mainWindow()
    win.showNormal()
    win.setGeometry(0, 0, 1600, 1000)
    p = plugins.get("semantic_imagery_search")
    if p is None:
        raise RuntimeError("the plugin did not load from the release zip")
    p.show_dock()
    iw = p.dock.index_widget
    note(f"banner: {p.engine_banner.label.text()!r}; Index enabled: {iw.index_button.isEnabled()} "
         f"({iw.index_button.toolTip()})")
    if iw.index_button.isEnabled():
        raise RuntimeError("Index is enabled with no engine")
    shot("01_fresh_profile")

    dlg = p.show_engine_dialog()
    dlg.move(820, 60)
    results: list = []
    dlg.engine_changed.connect(results.append)
    for source in SOURCES:
        dlg.variant_combo.setCurrentIndex(dlg.variant_combo.findData("cpu"))
        dlg.source_combo.setCurrentIndex(dlg.source_combo.findData(source))
        note(f"set up engine, torch from {source}: {dlg.size_label.text()}")
        results.clear()
        t0 = time.monotonic()
        dlg.start_setup()
        pump(4.0)
        shot(f"02_setup_{source}_running")
        wait_until(lambda: bool(results), 1800, f"the set-up ({source})")
        result = results[-1]
        took = time.monotonic() - t0
        if result.get("ok"):
            note(f"set-up with {source} done in {took:.0f} s: {result.get('summary', '').splitlines()[0]}")
            shot(f"03_setup_{source}_done")
            break
        note(f"set-up with {source} ended in {took:.0f} s: {result.get('error')}; banner: {p.engine_banner.label.text()!r}")
        shot(f"03_setup_{source}_failed")
    else:
        raise RuntimeError("no set-up route succeeded")
    dlg.close()
    if not iw.index_button.isEnabled():
        raise RuntimeError(f"Index still disabled after a passing set-up: {iw.index_button.toolTip()}")

    ow = iw.options_widget
    opts = ow.options()
    opts.captioner_kind, opts.device = "spectral", "cpu"
    ow.set_options(opts)
    p.index_ctl.tiling_hint.apply()
    done: list = []
    if not p.index_ctl.start_index():
        raise RuntimeError("the dock refused to start indexing")
    p.index_ctl.task.index_finished.connect(done.append)
    pump(3.0)
    shot("04_indexing")
    took = wait_until(lambda: bool(done), 1200, "indexing")
    if done[0].get("error"):
        raise RuntimeError(f"indexing failed: {done[0]['error']}")
    wait_until(lambda: all(r.state != "…" for r in iw.rows()), 120, "the rows' states after the job")
    rows = iw.rows()
    note(f"indexed in {took:.0f} s: {sum(r.get('tiles_new', 0) for r in done[0].get('rasters', []))} new tiles; "
         f"rows: {[r.state for r in rows]}; notes: {done[0].get('notes')}; outcome: {p.session.last_outcome}")
    if not all(r.state.startswith("indexed") for r in rows if r.checkable):
        raise RuntimeError(f"a row is not indexed: {[r.state for r in rows]}")
    shot("05_indexed")

    found: list = []
    p.search_ctl.search_finished.connect(lambda h, e: found.append((h, e)))
    w = p.dock.search_widget
    w.query_edit.setText(QUERY)
    w.request_search()
    wait_until(lambda: bool(found), 300, "the search")
    hits, error = found[-1]
    if error:
        raise RuntimeError(f"search failed: {error}")
    note(f"search {QUERY!r}: {len(hits)} hits; best {hits[0].score:.3f}: {hits[0].caption[:90]}")
    wait_until(lambda: all(w.model.has_thumbnail(h.tile_id) for h in hits), 120, "thumbnails")
    shot("06_searched")
    index_dir = p.session.index_dir()
    hnsw = Path(index_dir, "captions.hnsw")
    note(f"index folder {index_dir}: captions.hnsw {'written' if hnsw.is_file() else 'MISSING'}")
    if not hnsw.is_file():
        raise RuntimeError("the search file was not written")


def main() -> None:
    status = 0
    try:
        run()
        note("OK")
    except Exception as exc:  # noqa: BLE001 -- any failure is the walk's result
        note(f"FAILED: {exc}")
        with (OUT / "traceback.txt").open("w") as f:
            traceback.print_exc(file=f)
        try:
            shot("99_failure")
        except Exception:  # noqa: BLE001
            pass
        status = 1
    try:
        plugins["semantic_imagery_search"].unload()
    except Exception:  # noqa: BLE001
        pass
    os._exit(status)


main()
