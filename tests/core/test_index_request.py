"""One index request for every front end (issue 22): a round trip through the worker protocol's dict,
one-line refusals, and the same job whether the CLI, the worker or the request itself runs it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from plugin.core.errors import EngineError
from plugin.core.index_request import IndexRequest
from plugin.core.types import BandMap, RasterSource
from plugin.core.worker.worker_client import WorkerClient, WorkerError
from tests.core.test_pipeline import write_scene


def test_round_trip_through_the_protocol_dict() -> None:
    req = IndexRequest("/idx", (RasterSource("/a.tif", BandMap(3, 2, 1, 4), "A"), RasterSource("/b.tif")),
                       captioner="transformers:/m", tiling={"tile_size": 256, "overlap": 0.25, "scales": [1, 2]},
                       captioner_options={"variants": 3}, device="cpu", executor="ray",
                       executor_options={"caption_workers": 2}, wait_s=5, job_name="QGIS dock", document_graph="int8")
    wire = json.loads(json.dumps(req.to_dict()))  # what travels to the worker
    assert IndexRequest.from_dict(wire) == req
    assert req.tiling_params().tile_size == 256 and req.tiling_params().scales == (1, 2)
    assert IndexRequest.from_dict({"index_dir": "/idx", "sources": ["/c.tif"]}).sources == (RasterSource("/c.tif"),)


@pytest.mark.parametrize(("fields", "message"), [
    ({"tile": 3}, r"unknown option\(s\) tile"),
    ({"executor": "slurm"}, r"executor 'slurm': choose one of local, ray, ray-job"),
    ({"wait_s": -1}, r"wait_s must be 0 or more seconds"),
    ({"wait_s": "soon"}, r"wait_s 'soon' is not a number"),
    ({"document_graph": "int4"}, r"document graph 'int4': use auto, fp32 or int8"),
    ({"tiling": {"tile_size": "big"}}, r"index request: tiling \{.tile_size.: .big.\}: numbers expected"),
    ({"tiling": {"tilesize": 64}}, r"unknown tiling key\(s\) tilesize"),
    ({"captioner_options": ["variants", 3]}, r"captioner_options must be a mapping"),
    ({"force": "yes"}, r"force must be true or false"),
    ({"index_dir": ""}, r"index_dir must name a folder"),
])
def test_bad_requests_are_refused_in_one_line(fields: dict, message: str) -> None:
    with pytest.raises(EngineError, match=message) as err:
        IndexRequest.from_dict({"index_dir": "/idx", "sources": ["/a.tif"], **fields})
    assert "\n" not in str(err.value)


def test_the_worker_runs_a_request_and_refuses_an_unknown_option(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "scene.tif", size=128)
    req = IndexRequest(str(tmp_path / "idx"), (RasterSource(scene),), tiling={"tile_size": 64},
                       captioner_options={"variants": 2}, device="cpu", job_name="test")
    client = WorkerClient(sys.executable)  # the interpreter running the tests: the dev venv or the engine
    try:
        client.start()
        report = client.request("index", req.to_dict())
        with pytest.raises(EngineError, match=r"index: index request: unknown option\(s\) colour") as err:
            client.request("index", {**req.to_dict(), "colour": "blue"})
        assert isinstance(err.value, WorkerError) and err.value.kind == "ProtocolError"
    finally:
        client.stop()
    direct = IndexRequest(str(tmp_path / "idx2"), (RasterSource(scene),), tiling={"tile_size": 64},
                          captioner_options={"variants": 2}, device="cpu").run()
    assert report["rasters"][0]["tiles_new"] == direct.rasters[0]["tiles_new"] == 4


def test_the_request_module_imports_no_numpy(repo_root: Path) -> None:
    """QGIS's process builds requests (the task, Processing): the module must stay stdlib-only."""
    import subprocess

    code = "import sys, plugin.core.index_request; print(sorted(m for m in ('numpy', 'rasterio', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
