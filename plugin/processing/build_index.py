"""Processing algorithm "Build or update search index"."""

from __future__ import annotations

import os
from typing import Any, Optional

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterAuthConfig,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..core.errors import Canceled, EngineError
from ..core.index_request import IndexRequest
from ..core.worker.worker_client import WorkerClient
from ..qgis_io.layers import raster_source_from_layer
from .common import SearchAlgorithm, api_key, canceled_fn, engine_python, progress_to_feedback


def parse_scales(text: str) -> list[int]:
    try:
        vals = sorted({int(v) for v in str(text).replace(";", ",").split(",") if v.strip()})
    except ValueError:
        raise QgsProcessingException(f"scales {text!r}: expected integers like 1,2,4") from None
    if not vals or any(v < 1 for v in vals):
        raise QgsProcessingException(f"scales {text!r}: expected integers >= 1 like 1,2,4")
    return vals


def ray_options(address: str, caption_workers: int, dashboard: str = "", shared_dir: str = "",
                path_map: str = "") -> dict[str, Any]:
    """The worker's executor arguments: nothing (this computer); the Ray executor on a private local
    cluster ('local') or attached to `address`; or a Ray job (`dashboard` URL + `shared_dir`).
    `path_map`: "LOCAL=CLUSTER" entries separated by ';' or new lines. The token never comes here:
    it is read from the auth configuration and travels in the worker's environment."""
    if dashboard and address:
        raise QgsProcessingException("give a Ray cluster address or a Ray job dashboard URL, not both")
    if not address and not dashboard:
        if path_map.strip():
            raise QgsProcessingException("a path map applies to a Ray cluster or a Ray job only")
        return {}
    opts: dict[str, Any] = {}
    if dashboard:
        if not shared_dir:
            raise QgsProcessingException("a Ray job needs a shared folder both this computer and the cluster reach")
        opts.update(dashboard_url=dashboard, shared_dir=shared_dir)
    elif address.lower() != "local":
        opts["address"] = address
    if path_map.strip():
        from ..core.indexing.path_map import parse_path_map

        try:
            opts["path_map"] = [list(p) for p in parse_path_map(path_map)]
        except EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
    if caption_workers > 0:
        opts["caption_workers"] = caption_workers
    return {"executor": "ray-job" if dashboard else "ray", "executor_options": opts}


def ray_token_env(authcfg: str) -> Optional[dict[str, str]]:
    """The worker's environment with the Ray token from `authcfg` (None: QGIS's own, no token)."""
    if not authcfg:
        return None
    token = api_key(authcfg)
    if not token:
        raise QgsProcessingException("the Ray token could not be read from the authentication configuration")
    return dict(os.environ, RAY_AUTH_TOKEN=token, RAY_AUTH_MODE="token")


class BuildIndexAlgorithm(SearchAlgorithm):
    LAYERS, CAPTIONER, EMBEDDER, TILE_SIZE, OVERLAP, SCALES = "LAYERS", "CAPTIONER", "EMBEDDER", "TILE_SIZE", "OVERLAP", "SCALES"
    VARIANTS, AUTHCFG, DEVICE, REMOVE_MISSING, OUTPUT = "VARIANTS", "AUTHCFG", "DEVICE", "REMOVE_MISSING", "OUTPUT"
    CONNECT_TIMEOUT, TILE_DEADLINE, DOCUMENT_GRAPH = "CONNECT_TIMEOUT", "TILE_DEADLINE", "DOCUMENT_GRAPH"
    GRAPHS = ("auto", "fp32", "int8")
    RAY_ADDRESS, CAPTION_WORKERS = "RAY_ADDRESS", "CAPTION_WORKERS"
    RAY_DASHBOARD, SHARED_DIR, PATH_MAP, RAY_AUTHCFG = "RAY_DASHBOARD", "SHARED_DIR", "PATH_MAP", "RAY_AUTHCFG"

    def __init__(self) -> None:
        super().__init__()
        self._sources: list[Any] = []
        self._options: dict[str, Any] = {}
        self._env: Optional[dict[str, str]] = None  # the Ray token travels here only

    def name(self) -> str:
        return "build_index"

    def displayName(self) -> str:  # noqa: N802
        return "Build or update search index"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Captions every tile of the raster layers with a captioner, embeds the captions and stores them in a "
            "search index folder. Incremental: tiles already indexed are skipped, so running it again after a "
            "cancel or a crash resumes, and new layers are added. Captioner: 'spectral' (offline), "
            "'transformers:MODEL_ID_OR_FOLDER' or 'openai:BASE_URL#MODEL' (an OpenAI-compatible server; its API "
            "key comes from an authentication configuration). With 'Remove rasters not listed', rasters indexed "
            "before but not given now are dropped. Tiles that could not be read (a corrupt block) are reported as errors "
            "in the log and counted in the TILES_FAILED output (0 when every tile is indexed); the next run retries them."
        )

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(self.LAYERS, "Raster layers", QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterString(self.CAPTIONER, "Captioner", defaultValue="spectral"))
        self.addParameter(QgsProcessingParameterString(
            self.EMBEDDER, "Embedder (sentence-transformers id or folder; empty = packaged MiniLM)", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.TILE_SIZE, "Tile size (pixels)", QgsProcessingParameterNumber.Integer, 512, minValue=32, maxValue=8192))
        self.addParameter(QgsProcessingParameterNumber(
            self.OVERLAP, "Overlap (fraction of the tile size)", QgsProcessingParameterNumber.Double, 0.0,
            minValue=0.0, maxValue=0.9))
        self.addParameter(QgsProcessingParameterString(self.SCALES, "Scales (e.g. 1,2,4)", defaultValue="1"))
        advanced = [
            QgsProcessingParameterNumber(self.VARIANTS, "Caption variants per tile (model captioners; 0 = preset)",
                                         QgsProcessingParameterNumber.Integer, 0, minValue=0, maxValue=20),
            QgsProcessingParameterAuthConfig(self.AUTHCFG, "API key (authentication configuration)", optional=True),
            QgsProcessingParameterString(self.DEVICE, "Device (auto, cpu, cuda, mps)", defaultValue="auto"),
            QgsProcessingParameterBoolean(self.REMOVE_MISSING, "Remove rasters not listed here", defaultValue=False),
            QgsProcessingParameterEnum(self.DOCUMENT_GRAPH, "Caption embedding of a NEW index (auto: int8 on CPU, fp32 on"
                                       " GPU; an existing index keeps its own)", list(self.GRAPHS), defaultValue=0),
            QgsProcessingParameterNumber(self.CONNECT_TIMEOUT, "Server connect timeout (s, openai captioner)",
                                         QgsProcessingParameterNumber.Double, 5.0, minValue=0.5, maxValue=120.0),
            QgsProcessingParameterString(self.RAY_ADDRESS, "Run on a Ray cluster: address host:port (empty: this computer;"
                                         " 'local': a private Ray on this computer)", defaultValue="", optional=True),
            QgsProcessingParameterString(self.RAY_DASHBOARD, "Run as a Ray job: dashboard URL (http://head:8265)",
                                         defaultValue="", optional=True),
            QgsProcessingParameterString(self.SHARED_DIR, "Ray job: shared folder (mounted on both sides)",
                                         defaultValue="", optional=True),
            QgsProcessingParameterString(self.PATH_MAP, "Ray: path map, LOCAL=CLUSTER entries separated by ;",
                                         defaultValue="", optional=True),
            QgsProcessingParameterNumber(self.CAPTION_WORKERS, "Ray: most caption workers (0 = one per GPU)",
                                         QgsProcessingParameterNumber.Integer, 0, minValue=0, maxValue=4096),
            QgsProcessingParameterAuthConfig(self.RAY_AUTHCFG, "Ray token (authentication configuration)", optional=True),
            QgsProcessingParameterNumber(self.TILE_DEADLINE, "Server deadline per tile (s, openai captioner)",
                                         QgsProcessingParameterNumber.Double, 120.0, minValue=1.0, maxValue=3600.0),
        ]
        for p in advanced:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Index folder"))
        self.addOutput(QgsProcessingOutputNumber("TILES", "Tiles planned"))
        self.addOutput(QgsProcessingOutputNumber("TILES_NEW", "Tiles captioned in this run"))
        self.addOutput(QgsProcessingOutputNumber("TILES_FAILED", "Tiles that could not be read (retried by the next run)"))

    def prepareAlgorithm(self, parameters: dict, context: Any, feedback: Any) -> bool:  # noqa: N802
        """Main thread: resolve layers into plain sources (the worker reads the files, never the layers)."""
        layers = self.parameterAsLayerList(parameters, self.LAYERS, context)
        if not layers:
            raise QgsProcessingException("give at least one raster layer")
        try:
            self._sources = [raster_source_from_layer(lyr) for lyr in layers]
        except EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
        captioner = (self.parameterAsString(parameters, self.CAPTIONER, context) or "spectral").strip()
        opts: dict[str, Any] = {}
        variants = self.parameterAsInt(parameters, self.VARIANTS, context)
        if variants and captioner != "spectral":
            opts["variants"] = variants
        if captioner.startswith("openai:"):
            opts["connect_timeout_s"] = self.parameterAsDouble(parameters, self.CONNECT_TIMEOUT, context)
            opts["tile_deadline_s"] = self.parameterAsDouble(parameters, self.TILE_DEADLINE, context)
        key = api_key(self.parameterAsString(parameters, self.AUTHCFG, context))
        if key:
            opts["api_key"] = key
        self._options = {
            "captioner": captioner,
            "embedder": (self.parameterAsString(parameters, self.EMBEDDER, context) or "").strip() or None,
            "tiling": {
                "tile_size": self.parameterAsInt(parameters, self.TILE_SIZE, context),
                "overlap": self.parameterAsDouble(parameters, self.OVERLAP, context),
                "scales": parse_scales(self.parameterAsString(parameters, self.SCALES, context)),
            },
            "captioner_options": opts,
            "device": (self.parameterAsString(parameters, self.DEVICE, context) or "auto").strip(),
            "remove_missing": self.parameterAsBool(parameters, self.REMOVE_MISSING, context),
            "document_graph": self.GRAPHS[self.parameterAsEnum(parameters, self.DOCUMENT_GRAPH, context)],
            **ray_options((self.parameterAsString(parameters, self.RAY_ADDRESS, context) or "").strip(),
                          self.parameterAsInt(parameters, self.CAPTION_WORKERS, context),
                          (self.parameterAsString(parameters, self.RAY_DASHBOARD, context) or "").strip(),
                          (self.parameterAsString(parameters, self.SHARED_DIR, context) or "").strip(),
                          self.parameterAsString(parameters, self.PATH_MAP, context) or ""),
        }
        self._env = ray_token_env(self.parameterAsString(parameters, self.RAY_AUTHCFG, context)) \
            if "executor" in self._options else None
        return True

    def processAlgorithm(self, parameters: dict, context: Any, feedback: Any) -> dict:  # noqa: N802
        index_dir = self.parameterAsString(parameters, self.OUTPUT, context)
        client = WorkerClient(engine_python(), env=self._env)
        try:  # one request type for every front end (core/index_request.py), checked before the worker starts
            args = IndexRequest.from_dict({"index_dir": index_dir, "sources": self._sources, **self._options,
                                           "job_name": "Processing: Build or update search index"}).to_dict()
        except EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
        try:
            client.start()
            report = client.request("index", args, on_event=progress_to_feedback(feedback), is_canceled=canceled_fn(feedback))
        except Canceled:
            raise QgsProcessingException("canceled: what was indexed so far is kept; run again to resume") from None
        except EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
        finally:
            client.stop()
        rasters = report.get("rasters") or []
        for r in rasters:
            if r.get("error"):
                feedback.reportError(f"{r.get('name')}: {r['error']}")
            else:
                feedback.pushInfo(f"{r.get('name')}: {r.get('tiles_planned')} tiles, {r.get('tiles_new')} captioned, "
                                  f"{r.get('tiles_cached')} cached, {r.get('tiles_empty')} empty")
                if r.get("tiles_failed"):
                    feedback.reportError(f"{r.get('name')}: {r['tiles_failed']} tile(s) could not be read (the next "
                                         f"run retries them); first: {(r.get('failed_tiles') or [{}])[0].get('reason')}")
                from ..core.report_lines import raster_notes

                for line in raster_notes(r):  # a new tiling and its caption cache, fallback captions
                    feedback.pushWarning(f"{r.get('name')}: {line}")
        if report.get("removed"):
            feedback.pushInfo(f"removed {len(report['removed'])} raster(s) no longer listed")
        return {
            self.OUTPUT: index_dir,
            "TILES": sum(int(r.get("tiles_planned", 0)) for r in rasters),
            "TILES_NEW": sum(int(r.get("tiles_new", 0)) for r in rasters),
            "TILES_FAILED": sum(int(r.get("tiles_failed") or 0) for r in rasters),
        }
