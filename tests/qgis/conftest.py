"""QGIS-side fixtures shared by the worker/task/processing tests (pytest-qgis provides the app)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.core import rasters


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
