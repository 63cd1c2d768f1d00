"""QGIS-side fixtures shared by the worker/task/processing tests (pytest-qgis provides the app)."""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import tempfile
import types
from pathlib import Path

import pytest

from tests.core import rasters


@pytest.fixture(scope="session", autouse=True)
def _release_frames_pinned_by_processing_errors(qgis_app):
    """Free, before QGIS exits, the test frames that QGIS 3.22 keeps alive after a failed algorithm.

    When a Python `processAlgorithm` raises QgsProcessingException, QGIS 3.22's sip error handler keeps
    a reference to the exception, so its traceback, the algorithm's frame and, through `f_back`, the
    frame of the test that called `alg.run()` live to interpreter teardown. Layers held in that test's
    locals were then destroyed after `exitQgis()` had unloaded GDAL's drivers: GDALClose segfaulted
    (rc 139) after every result had been reported. Clearing those finished frames here lets the layers
    go while QGIS is still up. Only frames of this repository's code that have finished are cleared.
    """
    yield
    root = str(Path(__file__).resolve().parents[2])
    gc.collect()
    for obj in gc.get_objects():
        if type(obj) is types.FrameType and obj.f_code.co_filename.startswith(root):  # no __class__ lookups
            try:
                obj.clear()
            except RuntimeError:  # still executing (this fixture, pytest's own frames)
                pass
    gc.collect()


@pytest.fixture(scope="session", autouse=True)
def _remove_the_sessions_temp_folders(qgis_app):
    """Leave nothing of the session in the temp folder.

    - `QGIS3-XXXXXX`: QgsApplication's source cache makes a QTemporaryDir when the app is constructed
      (pytest-qgis does that before any conftest runs); the app is never destroyed (the process ends
      with it), so every session left one behind. A base64 source is written into that folder, which
      names it; it is removed at interpreter exit, after `exitQgis()`.
    - `sis-unsaved-*`: the index folders of the unsaved projects the dock tests work in (made with
      `tempfile.mkdtemp` by `qgis_io.project_index`, whatever name the plugin package was loaded
      under); each one made during the session is removed at its end.
    """
    from qgis.core import QgsApplication

    probe = QgsApplication.sourceCache().localFilePath("base64:eA==")  # b"x"
    folder = os.path.dirname(probe) if probe else ""
    if os.path.basename(folder).startswith(f"{QgsApplication.QGIS_APPLICATION_NAME}-") and \
            os.path.dirname(folder) == tempfile.gettempdir():
        atexit.register(shutil.rmtree, folder, True)
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        path = real_mkdtemp(*args, **kwargs)
        if os.path.basename(path).startswith("sis-unsaved-"):
            made.append(path)
        return path

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "mkdtemp", mkdtemp)
        yield
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def engine_env(monkeypatch) -> dict:
    """Environment for engine worker processes: one torch thread (on a shared 2-core box more only spin)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    return dict(os.environ)


@pytest.fixture
def utm18_raster(tmp_path: Path):
    """Factory: a generated 3-band uint8 GeoTIFF in EPSG:32618 (10 m pixels), path as str."""

    def make(name: str = "utm18.tif", width: int = 256, height: int = 192, seed: int = 0) -> str:
        data = rasters.pattern(3, height, width, seed=seed)
        return rasters.write_raster(str(tmp_path / name), data, crs="EPSG:32618")

    return make
