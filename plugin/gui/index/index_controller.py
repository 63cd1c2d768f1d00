"""Index panel logic: layer states, indexing jobs (IndexTask in its own worker process), clear.

The main thread only resolves layers into plain `RasterSource` values (file path, band map, name);
reading pixels, captioning and embedding all happen in the engine worker the task drives.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

from qgis.core import Qgis, QgsApplication, QgsMapLayerType, QgsRasterLayer
from qgis.PyQt.QtCore import QObject, QTimer

from ..messages import job_outcome, report_error, report_info
from ..session import EngineSession
from ..settings.cluster_settings import load_cluster_options
from ..settings.settings import save_index_options, tiling_saved
from .index_progress import IndexProgressView
from .index_widget import IndexWidget, LayerRow

#: Seconds a cancelled job may take to wind down before its worker process is killed.
CANCEL_GRACE_S = 2.0
#: Tiles per spectral-captioner call in the dock: small enough for progress every second or so.
SPECTRAL_PROGRESS_BATCH = 8


def _norm(path: str) -> str:
    return os.path.normcase(os.path.realpath(path)) if path else ""


class IndexController(QObject):
    def __init__(self, session: EngineSession, widget: IndexWidget, set_status, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.widget = widget
        self.set_status = set_status
        self.task: Any = None
        self._job_keys: list[str] = []
        self._paths: dict[str, str] = {}  # layer id -> normalised file path (or "" when unsupported)
        self._watched: set[str] = set()
        self._closed = False
        self._cancelling = False
        self._new_layers: list[str] = []
        self.progress = IndexProgressView(widget, session, set_status, self._running, self)
        widget.index_requested.connect(lambda: self.start_index(update=False))
        widget.update_requested.connect(lambda: self.start_index(update=True))
        widget.cancel_requested.connect(self.cancel)
        widget.clear_requested.connect(self.clear_index)
        session.info_changed.connect(lambda _i: self.refresh_rows())
        from .tiling_hint import TilingHint

        self.tiling_hint = TilingHint(widget.options_widget, self.checked_layers, auto=not tiling_saved(),
                                      indexed=self.checked_indexed_rows, preview=self.request_preview)
        widget.layer_list.itemChanged.connect(lambda _item: self.tiling_hint.update())
        p = session.project
        p.layersAdded.connect(self._on_layers_added)
        p.layersRemoved.connect(self._on_layers_removed)

    # --- layer rows --------------------------------------------------------------------------
    def raster_layers(self) -> list[QgsRasterLayer]:
        from ..search.highlighter import RESULTS_PROPERTY

        out = []
        for layer in self.session.project.mapLayers().values():
            if layer.type() == QgsMapLayerType.RasterLayer and not layer.customProperty(RESULTS_PROPERTY):
                out.append(layer)
        return sorted(out, key=lambda lyr: lyr.name().lower())

    def checked_layers(self) -> list[QgsRasterLayer]:
        project = self.session.project
        return [lyr for lyr in (project.mapLayer(k) for k in self.widget.checked_keys()) if isinstance(lyr, QgsRasterLayer)]

    def checked_indexed_rows(self) -> list[dict]:
        """The index rows of the checked layers that are indexed (for what a new tiling would do)."""
        rows = {_norm(r.get("path", "")): r for r in (self.session.info.get("rasters") or [])}
        return [rows[self._paths[lyr.id()]] for lyr in self.checked_layers() if self._paths.get(lyr.id()) in rows]

    def request_preview(self, tiling: dict, on_result: Callable[[list[dict]], None]) -> None:
        """Exact counts for a tiling on the checked indexed layers (the warm worker reads the index)."""
        rows = {_norm(r.get("path", "")) for r in (self.session.info.get("rasters") or [])}
        try:
            sources = [dataclasses.replace(self._source(lyr), name=lyr.name()) for lyr in self.checked_layers()
                       if self._paths.get(lyr.id()) in rows]
        except Exception:  # noqa: BLE001 - a layer that cannot be indexed has no preview
            return
        if not sources:
            return

        def done(result: Any, error: str) -> None:
            if not error and isinstance(result, list) and not self._closed:
                on_result([dict(item, name=src.name) for item, src in zip(result, sources)])

        self.session.queue.call("preview", {"index_dir": self.session.index_dir(), "tiling": tiling,
                                            "sources": [s.to_dict() for s in sources]}, done, key="preview")

    def _source(self, layer: QgsRasterLayer) -> Any:
        from ...qgis_io.layers import raster_source_from_layer

        return raster_source_from_layer(layer)

    def refresh_rows(self) -> None:
        """Rebuild the list from the project's raster layers and the last known index state."""
        if self._closed:
            return
        info_rows = {(_norm(r.get("path", ""))): r for r in (self.session.info.get("rasters") or [])}
        rows: list[LayerRow] = []
        seen_paths: set[str] = set()
        for layer in self.raster_layers():
            lid = layer.id()
            if lid not in self._paths:
                self._watch(layer)
                try:
                    src = self._source(layer)
                    self._paths[lid] = _norm(src.path)
                    band = src.band_map.to_text() if src.band_map else ""
                except Exception as exc:
                    rows.append(LayerRow(lid, layer.name(), f"cannot index: {str(exc).splitlines()[0]}", "", False))
                    self._paths[lid] = ""
                    continue
            else:
                band = ""
            path = self._paths[lid]
            if not path:
                rows.append(LayerRow(lid, layer.name(), "cannot index (not a file)", "", False))
                continue
            seen_paths.add(path)
            rows.append(LayerRow(lid, layer.name(), self._state_for(lid, info_rows.get(path)), band))
        for path, r in info_rows.items():
            if path not in seen_paths:
                rows.append(LayerRow("raster:" + str(r.get("raster_id")), str(r.get("name") or os.path.basename(path)),
                                     "stale (layer removed; Update drops it)", "", False))
        self.widget.set_rows(rows)
        self._report_new_layers()
        self.tiling_hint.forget()  # the index may have changed: exact counts are asked again
        self.tiling_hint.update()
        self.set_status(self.session.status_text())

    def _watch(self, layer: QgsRasterLayer) -> None:
        """A layer pointed at another file: its old tiles become stale, the new file "not indexed"."""
        if layer.id() in self._watched:
            return
        self._watched.add(layer.id())
        layer.dataSourceChanged.connect(lambda lid=layer.id(): self._on_source_changed(lid))

    def _on_source_changed(self, layer_id: str) -> None:
        self._paths.pop(layer_id, None)
        if not self._closed:
            self.refresh_rows()

    def _state_for(self, layer_id: str, info_row: Optional[dict]) -> str:
        if self.task is not None and layer_id in self._job_keys:
            return self.widget.state(layer_id) or "waiting"
        if info_row is None:
            return "not indexed"
        if info_row.get("state") == "indexed" and not info_row.get("stale"):
            n = int(info_row.get("tiles", 0))
            return f"indexed ({n:,} tile{'' if n == 1 else 's'})"
        if info_row.get("state") == "indexing":
            return "interrupted (Update resumes it)"
        return "stale (Update finishes it)"

    def _on_layers_added(self, layers) -> None:
        rasters = [lyr for lyr in layers if lyr.type() == QgsMapLayerType.RasterLayer]
        from ..search.highlighter import RESULTS_PROPERTY

        rasters = [lyr for lyr in rasters if not lyr.customProperty(RESULTS_PROPERTY)]
        if not rasters or self._closed:
            return
        self._new_layers.extend(lyr.id() for lyr in rasters)
        self.refresh_rows()

    def _report_new_layers(self) -> None:
        """Offer indexing for added layers that are not indexed -- once the index's content is known
        (a reopened project's layers arrive before its index is read)."""
        from ...qgis_io.project_index import recorded_index_dir

        if not self._new_layers or ("exists" not in self.session.info and recorded_index_dir(self.session.project)):
            return
        ids, self._new_layers = self._new_layers, []
        rows = self.widget.rows_by_key()
        names = [rows[i].name for i in ids if i in rows and rows[i].state == "not indexed"]
        if names:
            text = ", ".join(names[:3]) + ("…" if len(names) > 3 else "")
            report_info(self.session.iface, f"Not indexed yet: {text}. Tick and press Index in the Index tab to search them")

    def _on_layers_removed(self, layer_ids) -> None:
        for lid in layer_ids:
            self._paths.pop(lid, None)
            self._watched.discard(lid)
        if not self._closed:
            self.refresh_rows()

    # --- jobs --------------------------------------------------------------------------------
    def start_index(self, update: bool = False, keys: Optional[list[str]] = None) -> bool:
        """Start an indexing job for the checked layers (or, for update, every layer); False if not started."""
        if self.task is not None:
            report_info(self.session.iface, "An indexing job is already running", Qgis.Warning)
            return False
        if self.widget.engine_problem:  # the buttons are off too; a worker that cannot import numpy never starts
            report_error(self.session.iface, f"Indexing needs the engine: {self.widget.engine_problem} "
                                             "(Plugins › Semantic Imagery Search › Set up engine…)")
            return False
        opts = self.widget.options()
        try:
            engine = opts.to_engine()
        except (ValueError, RuntimeError) as exc:
            report_error(self.session.iface, str(exc))
            return False
        try:
            cluster = load_cluster_options()
            run_on = cluster.executor_args()
            env = cluster.worker_env()  # the Ray token, read now, travels in the worker's environment only
        except (ValueError, RuntimeError) as exc:
            report_error(self.session.iface, f"{exc} (Settings ⚙ › Run indexing on)")
            return False
        engine.update(run_on)
        save_index_options(opts)
        project = self.session.project
        if keys is None:
            keys = [r.key for r in self.widget.rows() if r.checkable] if update else self.widget.checked_keys()
        sources, job_keys = [], []
        for key in keys:
            layer = project.mapLayer(key)
            if layer is None:
                continue
            try:
                src = self._source(layer)
                text = self.widget.band_map_text(key)
                if text:
                    from ...core.types import BandMap

                    bm = BandMap.parse(text)
                    bm.check(layer.bandCount())
                    src = dataclasses.replace(src, band_map=bm)
                sources.append(dataclasses.replace(src, name=layer.name()))
                job_keys.append(key)
            except Exception as exc:
                report_error(self.session.iface, f"{layer.name()}: {str(exc).splitlines()[0] if str(exc) else exc}")
                return False
        if not sources and not update:
            report_info(self.session.iface, "Tick at least one raster layer to index", Qgis.Warning)
            return False
        engine["remove_missing"] = bool(update)
        # names this job in the refusal another job on the same index gets (one writer per index)
        engine["job_name"] = f"QGIS dock: {'update' if update else 'index'} {len(sources)} raster(s)"
        from ...tasks.index_task import IndexTask

        verb = "Updating" if update else "Indexing"
        if engine["captioner"] == "spectral" and "batch_size" not in engine["captioner_options"]:
            # its default (64 tiles a call) moved the progress 20 % at a time; 8 tiles is ~1 s of work
            engine["captioner_options"]["batch_size"] = SPECTRAL_PROGRESS_BATCH
        task = IndexTask(f"Semantic Imagery Search: {verb.lower()} {len(sources)} raster(s)",
                         self.session.index_dir(), sources, engine, self.session.python(),
                         env=env, cancel_grace=CANCEL_GRACE_S)
        task.phase_changed.connect(self.progress.on_phase)
        task.index_finished.connect(self._on_finished)
        self.task, self._job_keys = task, job_keys
        where = "" if not run_on else f"on {cluster.described()}"
        self.progress.start(job_keys, {key: sources[i].name or "" for i, key in enumerate(job_keys)}, where)
        self.widget.set_running(True)
        for key in job_keys:
            self.widget.set_state(key, "waiting")
        self.session.job_text = f"{verb} {len(sources)} raster(s){' ' + where if where else ''}: starting the engine…"
        self.set_status(self.session.status_text())
        QgsApplication.taskManager().addTask(task)
        return True

    def _running(self) -> bool:
        return not self._closed and self.task is not None and not self._cancelling

    def _on_finished(self, report: dict) -> None:
        self.task, keys, self._job_keys = None, self._job_keys, []
        self.progress.stop()
        self._cancelling = False
        self.session.job_text = ""
        if self._closed:
            return
        self.widget.set_running(False)
        iface = self.session.iface
        if report.get("error"):
            self.session.last_outcome = f"failed: {str(report['error']).splitlines()[0]}"
            report_error(iface, f"Indexing failed: {report['error']}", report.get("details"))
        elif report.get("canceled"):
            self.session.last_outcome = "cancelled (what was done is kept; Update resumes it)"
            report_info(iface, "Indexing cancelled: what was done is kept and Update resumes it", Qgis.Warning)
        else:
            rasters = report.get("rasters") or []
            self.session.last_outcome = job_outcome(report)
            failed = sum(int(r.get("tiles_failed") or 0) for r in rasters)  # unreadable tiles (corrupt blocks)
            broken = sum(1 for r in rasters if r.get("error"))  # rasters that could not be opened
            if failed:
                self.session.last_outcome += f", {failed} tiles failed (Update retries them)"
            if broken:
                self.session.last_outcome += f", {broken} raster(s) could not be read"
            from ...core.report_lines import raster_notes

            notes = [f"{r.get('name')}: {line}" for r in rasters for line in raster_notes(r)]
            job_notes = [str(n) for n in report.get("notes") or []]  # e.g. a search file that was not saved
            fell_back = any(r.get("tiles_fallback") for r in rasters)
            if notes or job_notes:
                self.session.last_outcome += "; " + "; ".join(notes + job_notes)
            level = Qgis.Warning if failed or broken or fell_back or job_notes else Qgis.Success
            # after QGIS's own "Task complete" (pushed when the task ends), so ours is the one on top
            text = f"Index ready: {self.session.last_outcome}"
            QTimer.singleShot(400, lambda: report_info(iface, text, level, duration=10))
        for key in keys:
            self.widget.set_state(key, "…")
        self.session.refresh_info()

    def cancel(self) -> None:
        """Say "Cancelling…" at once; the worker stops within CANCEL_GRACE_S (it is killed after that)."""
        if self.task is None or self._cancelling:
            return
        self._cancelling = True
        self.widget.set_cancelling()
        for key in self._job_keys:
            state = self.widget.state(key) or ""
            if not state.startswith("indexed"):
                self.widget.set_state(key, "cancelling…")
        self.session.job_text = "Cancelling the indexing job… (what is done is kept)"
        self.set_status(self.session.status_text())
        self.task.cancel()

    def clear_index(self) -> None:
        """Remove every raster from the project's index (the folder stays, empty)."""
        ids = [str(r.get("raster_id")) for r in (self.session.info.get("rasters") or [])]
        if not ids:
            self.refresh_rows()
            return

        def done(_result: Any, error: str) -> None:
            if error:
                report_error(self.session.iface, f"Clearing the index failed: {error}")
            self.session.last_outcome = "index cleared" if not error else self.session.last_outcome
            self.session.refresh_info()

        self.session.queue.call("remove", {"index_dir": self.session.index_dir(), "rasters": ids}, done, key="remove")

    def forget_layers(self) -> None:
        self._paths.clear()
        self._watched.clear()

    def close(self) -> None:
        self._closed = True
        p = self.session.project
        for sig, slot in ((p.layersAdded, self._on_layers_added), (p.layersRemoved, self._on_layers_removed)):
            try:
                sig.disconnect(slot)
            except (TypeError, RuntimeError):
                pass
        if self.task is not None:
            try:
                self.task.cancel()
            except RuntimeError:
                pass
