"""Processing algorithm "Score surface for a query": every tile's fused score as a one-band raster."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
)

from ..core.errors import Canceled, EngineError
from .common import SearchAlgorithm, canceled_fn, engine_python, progress_to_feedback, shared_client

FUSIONS = ("max", "mean", "top2")


class ScoreSurfaceAlgorithm(SearchAlgorithm):
    INDEX, QUERY, RASTER, FUSION, CELL, OUTPUT = "INDEX", "QUERY", "RASTER", "FUSION", "CELL", "OUTPUT"

    def name(self) -> str:
        return "score_surface"

    def displayName(self) -> str:  # noqa: N802
        return "Score surface for a query"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Writes every tile's score for a text query (the cosine of its best caption variant with the "
                "query) as a one-band raster on the indexed raster's grid, coarsened to a fraction of a tile; where "
                "tiles overlap (overlap, several scales) a cell holds the highest score; cells no tile covers are "
                "nodata (-2). With several rasters in the index, name the one to draw (path, layer name or id).")

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(self.INDEX, "Index folder", QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterString(self.QUERY, "Query"))
        self.addParameter(QgsProcessingParameterString(self.RASTER, "Raster (path, name or id; empty = the only one)",
                                                       optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.FUSION, "Score of a tile from its caption variants",
                                                     list(FUSIONS), defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.CELL, "Cell size in raster pixels (0 = tile width / 8)",
                                                       QgsProcessingParameterNumber.Integer, 0, minValue=0))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Score surface"))

    def processAlgorithm(self, parameters: dict, context: Any, feedback: Any) -> dict:  # noqa: N802
        index_dir = self.parameterAsFile(parameters, self.INDEX, context)
        raster = self.parameterAsString(parameters, self.RASTER, context).strip()
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        tmp = tempfile.mkdtemp(prefix="sis_surface_")
        args: dict[str, Any] = {
            "index_dir": index_dir, "query": self.parameterAsString(parameters, self.QUERY, context), "out_dir": tmp,
            "fusion": FUSIONS[self.parameterAsEnum(parameters, self.FUSION, context)],
            "cell_px": self.parameterAsInt(parameters, self.CELL, context),
        }
        if raster:
            args["rasters"] = [raster]
        try:
            written = shared_client(engine_python()).request(
                "surface", args, on_event=progress_to_feedback(feedback), is_canceled=canceled_fn(feedback)) or []
            if not written:
                raise QgsProcessingException("the index holds no captioned tile for that raster")
            if len(written) > 1:
                names = ", ".join(str(w["name"]) for w in written)
                raise QgsProcessingException(f"the index holds several rasters ({names}): choose one in Raster")
            src = written[0]["path"]
            if out.lower().endswith((".tif", ".tiff")):
                shutil.copyfile(src, out)
            else:
                from osgeo import gdal

                if gdal.Translate(out, src) is None:
                    raise QgsProcessingException(f"cannot write {out}")
        except Canceled:
            raise QgsProcessingException("score surface canceled") from None
        except EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if feedback is not None:
            w = written[0]
            feedback.pushInfo(f"{w['name']}: scores {w['min']:.3f} to {w['max']:.3f}, cell {w['cell_px']} px -> {os.path.basename(out)}")
        return {self.OUTPUT: out}
