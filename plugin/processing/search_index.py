"""Processing algorithm "Search imagery index": a query -> a polygon layer of the best tiles."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsFeatureSink,
    QgsProcessingException,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsWkbTypes,
)

from ..core.errors import Canceled, EngineError
from ..core.search.query import SYNTAX_HELP
from ..core.types import Hit
from ..qgis_io.hits_layer import hit_features, hits_crs, hits_fields
from .common import SearchAlgorithm, canceled_fn, engine_python, progress_to_feedback, shared_client

FUSIONS = ("max", "mean", "top2")
RANKERS = ("hybrid", "dense", "lexical")


class SearchIndexAlgorithm(SearchAlgorithm):
    INDEX, QUERY, TOP, FUSION, MIN_SCORE, OUTPUT = "INDEX", "QUERY", "TOP", "FUSION", "MIN_SCORE", "OUTPUT"
    RANKER, LIKE = "RANKER", "LIKE"

    def name(self) -> str:
        return "search_index"

    def displayName(self) -> str:  # noqa: N802
        return "Search imagery index"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Ranks the tiles of a search index for a text query (e.g. 'oil storage tanks near a harbour') and "
            "writes the best ones as polygons (their footprints) with rank, score, the best-matching caption, "
            "raster, tile id and scale. The output is in the project CRS, or the first raster's CRS without a project.\n"
            f"{SYNTAX_HELP}.\n"
            "Search by example: leave the query empty and give a tile as RASTER:COL,ROW[,SCALE] (a full-resolution "
            "pixel of an indexed raster, by path, name or id): tiles that look like it are ranked instead."
        )

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(self.INDEX, "Index folder", QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterString(self.QUERY, "Query", optional=True))
        self.addParameter(QgsProcessingParameterString(self.LIKE, "Search by example: RASTER:COL,ROW[,SCALE]", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.TOP, "Number of results", QgsProcessingParameterNumber.Integer, 10, minValue=1, maxValue=10000))
        fusion = QgsProcessingParameterEnum(self.FUSION, "Score of a tile from its caption variants", list(FUSIONS), defaultValue=0)
        min_score = QgsProcessingParameterNumber(self.MIN_SCORE, "Minimum score", QgsProcessingParameterNumber.Double,
                                                 optional=True, minValue=-1.0, maxValue=1.0)
        ranker = QgsProcessingParameterEnum(self.RANKER, "Ranker (hybrid = captions' words + meaning)", list(RANKERS),
                                            defaultValue=0)
        for p in (fusion, min_score, ranker):
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Search results"))

    def processAlgorithm(self, parameters: dict, context: Any, feedback: Any) -> dict:  # noqa: N802
        index_dir = self.parameterAsFile(parameters, self.INDEX, context)
        query = self.parameterAsString(parameters, self.QUERY, context)
        args: dict[str, Any] = {
            "index_dir": index_dir, "query": query, "top": self.parameterAsInt(parameters, self.TOP, context),
            "fusion": FUSIONS[self.parameterAsEnum(parameters, self.FUSION, context)],
        }
        like = self.parameterAsString(parameters, self.LIKE, context).strip()
        if bool(query.strip()) == bool(like):
            raise QgsProcessingException("give a query or a tile to search like (RASTER:COL,ROW[,SCALE]), not both")
        if like:
            args["like"] = like
        args["ranker"] = RANKERS[self.parameterAsEnum(parameters, self.RANKER, context)]
        if parameters.get(self.MIN_SCORE) not in (None, ""):
            args["min_score"] = self.parameterAsDouble(parameters, self.MIN_SCORE, context)
        if feedback is not None:
            feedback.pushInfo("searching (the first search starts the engine and loads the embedder)")
        try:
            result = shared_client(engine_python()).request(
                "search", args, on_event=progress_to_feedback(feedback), is_canceled=canceled_fn(feedback))
        except Canceled:
            raise QgsProcessingException("search canceled") from None
        except EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
        hits = [Hit.from_dict(h) for h in result or []]
        project = context.project()
        crs = project.crs() if project is not None and project.crs().isValid() else hits_crs(hits)
        fields = hits_fields()
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, fields, QgsWkbTypes.Polygon, crs)
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        for f in hit_features(hits, crs, fields):
            sink.addFeature(f, QgsFeatureSink.FastInsert)
        if feedback is not None:
            feedback.pushInfo(f"{len(hits)} hit(s) for {query or 'tiles like ' + like!r}")
        return {self.OUTPUT: dest_id}
