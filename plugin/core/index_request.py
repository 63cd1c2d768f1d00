"""One index request: what the CLI, the worker protocol, the QGIS task, Processing and the dock all build.

A new index option is a field here (with its check), one widget and one CLI flag: the worker and the
task pass the request on as a whole (`to_dict` / `from_dict`, JSON-safe), and `run` hands it to
`index_rasters`. Validated once, where it is made, with one-line errors. Stdlib only: the QGIS task and Processing
check their options with it in QGIS's own process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from .definitions import EXECUTORS, TILING_KEYS, check_graph
from .errors import EngineError
from .types import CancelFn, ProgressFn, RasterSource, never_canceled, no_progress


@dataclass(frozen=True)
class IndexRequest:
    """Index `sources` into `index_dir`; every other field is an option of `index_rasters`."""

    index_dir: str
    sources: tuple[RasterSource, ...] = ()
    captioner: str = "spectral"
    embedder: Optional[str] = None
    #: TilingParams as a dict (tile_size, tile_size_units, overlap, scales, out_size, min_valid_fraction); None: the default
    tiling: Optional[dict[str, Any]] = None
    captioner_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    remove_missing: bool = False
    executor: str = "local"
    executor_options: dict[str, Any] = field(default_factory=dict)
    force: bool = False
    wait_s: float = 0.0
    #: how this job is named to another job that finds the index busy
    job_name: Optional[str] = None
    #: "auto" / None (the index's record, else the default), "fp32" or "int8"
    document_graph: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.index_dir, str) or not self.index_dir.strip():
            raise EngineError("index request: index_dir must name a folder")
        object.__setattr__(self, "sources", tuple(self.sources))
        if not all(isinstance(s, RasterSource) for s in self.sources):
            raise EngineError("index request: sources must be raster sources")
        if not isinstance(self.captioner, str) or not self.captioner.strip():
            raise EngineError("index request: captioner must be a captioner spec, e.g. spectral")
        if self.embedder is not None and not isinstance(self.embedder, str):
            raise EngineError("index request: embedder must be a model id, a folder or empty")
        for name in ("captioner_options", "executor_options"):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, {})
            elif not isinstance(value, dict):
                raise EngineError(f"index request: {name} must be a mapping of option names to values")
        if self.tiling is not None:
            _check_tiling(self.tiling)
        if not isinstance(self.device, str) or not self.device.strip():
            raise EngineError("index request: device must be auto, cpu, cuda, cuda:N or mps")
        if self.executor not in EXECUTORS:
            raise EngineError(f"index request: executor {self.executor!r}: choose one of {', '.join(EXECUTORS)}")
        try:
            wait = float(self.wait_s)
        except (TypeError, ValueError):
            raise EngineError(f"index request: wait_s {self.wait_s!r} is not a number of seconds") from None
        if not math.isfinite(wait) or wait < 0:
            raise EngineError(f"index request: wait_s must be 0 or more seconds, not {self.wait_s!r}")
        object.__setattr__(self, "wait_s", wait)
        for name in ("remove_missing", "force"):
            if not isinstance(getattr(self, name), bool):
                raise EngineError(f"index request: {name} must be true or false")
        check_graph(self.document_graph)

    def tiling_params(self) -> Any:
        """The request's TilingParams (None: the job's default)."""
        if self.tiling is None:
            return None
        from .rasters.tiling import TilingParams

        try:
            return TilingParams.from_dict(self.tiling)
        except (TypeError, ValueError) as exc:
            raise EngineError(f"index request: tiling {self.tiling!r}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: what the worker protocol carries."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["sources"] = [s.to_dict() for s in self.sources]
        out["captioner_options"] = dict(self.captioner_options)
        out["executor_options"] = dict(self.executor_options)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexRequest:
        """A request from its dict (the worker's arguments, a task's options); unknown keys are refused."""
        if not isinstance(d, dict):
            raise EngineError("index request: expected a mapping of options")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EngineError(f"index request: unknown option(s) {', '.join(unknown)}")
        raw = d.get("sources") or []
        if not isinstance(raw, (list, tuple)):
            raise EngineError("index request: sources must be a list of raster paths or sources")
        try:
            sources = tuple(s if isinstance(s, RasterSource) else RasterSource.from_dict(s) if isinstance(s, dict)
                            else RasterSource(str(s)) for s in raw)
        except (KeyError, ValueError, TypeError) as exc:
            raise EngineError(f"index request: bad raster source ({exc})") from None
        return cls(**{**{k: v for k, v in d.items() if k != "sources"}, "sources": sources})

    def run(self, progress: ProgressFn = no_progress, is_canceled: CancelFn = never_canceled) -> Any:
        """Run the job (`index_rasters`); returns its IndexReport."""
        from .indexing.job import index_rasters

        return index_rasters(
            self.index_dir, list(self.sources), captioner=self.captioner, embedder=self.embedder,
            tiling=self.tiling_params(), captioner_options=dict(self.captioner_options), device=self.device,
            remove_missing=self.remove_missing, executor=self.executor, force=self.force, wait_s=self.wait_s,
            job=self.job_name, executor_options=dict(self.executor_options) or None,
            document_graph=self.document_graph, progress=progress, is_canceled=is_canceled,
        )


def _check_tiling(tiling: Any) -> None:
    """The tiling mapping's keys and value types (the ranges are checked where the tiles are planned)."""
    if not isinstance(tiling, dict):
        raise EngineError("index request: tiling must be a mapping (tile_size, overlap, scales, ...)")
    unknown = sorted(set(tiling) - set(TILING_KEYS))
    if unknown:
        raise EngineError(f"index request: unknown tiling key(s) {', '.join(unknown)}")
    try:
        for key in ("tile_size", "out_size"):
            if tiling.get(key) is not None:
                int(tiling[key])
        for key in ("tile_size_units", "overlap", "min_valid_fraction"):
            if tiling.get(key) is not None:
                float(tiling[key])
        [int(x) for x in tiling.get("scales") or ()]
    except (TypeError, ValueError):
        raise EngineError(f"index request: tiling {tiling!r}: numbers expected") from None
