"""Load the plugin the way QGIS does, for tests, benchmarks and scripts (dev tooling, not shipped).

QGIS imports the plugin folder as a package named after the folder; a checkout's folder name is
arbitrary, so we import the repository root (or an unzipped release) under the released name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "semantic_imagery_search"
#: Modules that must never be imported into QGIS's process by loading the plugin.
HEAVY = ("torch", "transformers", "sentence_transformers", "rasterio", "hnswlib", "numpy")


def import_plugin_package(folder: Path = ROOT, name: str = PACKAGE) -> ModuleType:
    """Import `folder` as the package `name` (cached in sys.modules, as QGIS would)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(folder) / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None, folder
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


_PROBE = textwrap.dedent("""
    import json, sys, time
    from unittest.mock import MagicMock
    from qgis.core import QgsApplication
    from qgis.gui import QgsMapCanvas
    from qgis.PyQt.QtWidgets import QMainWindow
    app = QgsApplication([], True); app.initQgis()
    win = QMainWindow(); canvas = QgsMapCanvas(win)
    iface = MagicMock(); iface.mainWindow.return_value = win; iface.mapCanvas.return_value = canvas
    sys.path.insert(0, {scripts!r})
    from plugin_loader import HEAVY, import_plugin_package
    before = set(sys.modules)
    t0 = time.perf_counter()
    mod = import_plugin_package()
    t1 = time.perf_counter()
    plugin = mod.classFactory(iface)
    t2 = time.perf_counter()
    plugin.initGui()
    t3 = time.perf_counter()
    plugin.unload()
    t4 = time.perf_counter()
    new = set(sys.modules) - before
    heavy = sorted(m for m in new if m.split(".")[0] in HEAVY)
    print(json.dumps({{"import": t1 - t0, "classFactory": t2 - t1, "initGui": t3 - t2, "unload": t4 - t3,
                       "total": t3 - t0, "modules": len(new), "heavy": heavy}}))
""")


def probe_fresh_load(timeout: float = 120.0) -> dict[str, Any]:
    """classFactory + initGui + unload of the real plugin in a fresh offscreen QGIS process.

    Returns the phase times (seconds), the number of modules the plugin imported and which of
    `HEAVY` it imported. Raises RuntimeError with the child's stderr if it fails.
    """
    code = _PROBE.format(scripts=str(Path(__file__).resolve().parent))
    # The child's QGIS leaves temp folders behind (its source cache's QTemporaryDir outlives the app):
    # it gets a temp folder of its own, removed afterwards.
    with tempfile.TemporaryDirectory(prefix="sis-probe-") as tmp:
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "TMPDIR": tmp}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])
