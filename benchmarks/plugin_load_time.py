"""Plugin load time: classFactory + initGui in a fresh QGIS process (budget 0.5 s), and what it imports.

Runs N fresh interpreters so the number includes the cold import of the plugin's modules, the way
QGIS pays it at start-up. Prints the median, the worst run and the ratio to the 0.5 s budget.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 0.5
RUNS = int(os.environ.get("RUNS", "5"))

CODE = textwrap.dedent(f"""
    import importlib.util, json, sys, time
    from unittest.mock import MagicMock
    from qgis.core import QgsApplication
    from qgis.gui import QgsMapCanvas
    from qgis.PyQt.QtWidgets import QMainWindow
    app = QgsApplication([], True); app.initQgis()
    win = QMainWindow(); canvas = QgsMapCanvas(win)
    iface = MagicMock(); iface.mainWindow.return_value = win; iface.mapCanvas.return_value = canvas
    before = set(sys.modules)
    t0 = time.perf_counter()
    spec = importlib.util.spec_from_file_location("semantic_imagery_search", r"{ROOT / '__init__.py'}",
                                                  submodule_search_locations=[r"{ROOT}"])
    mod = importlib.util.module_from_spec(spec); sys.modules["semantic_imagery_search"] = mod
    spec.loader.exec_module(mod)
    t1 = time.perf_counter()
    plugin = mod.classFactory(iface)
    t2 = time.perf_counter()
    plugin.initGui()
    t3 = time.perf_counter()
    plugin.unload()
    t4 = time.perf_counter()
    new = set(sys.modules) - before
    heavy = sorted(m for m in new if m.split(".")[0] in ("torch", "transformers", "sentence_transformers", "rasterio", "hnswlib", "numpy"))
    print(json.dumps({{"import": t1 - t0, "classFactory": t2 - t1, "initGui": t3 - t2, "unload": t4 - t3,
                       "total": t3 - t0, "modules": len(new), "heavy": heavy}}))
""")


def main() -> int:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    runs = []
    for _ in range(RUNS):
        out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=120)
        if out.returncode != 0:
            print(out.stderr[-2000:])
            return 1
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    totals = [r["total"] for r in runs]
    med = statistics.median(totals)
    print(f"plugin load (classFactory + initGui, fresh process) over {RUNS} runs:")
    for key in ("import", "classFactory", "initGui", "unload"):
        print(f"  {key:13s} median {statistics.median(r[key] for r in runs) * 1000:7.1f} ms")
    print(f"  total         median {med * 1000:7.1f} ms, worst {max(totals) * 1000:.1f} ms "
          f"-> {med / BUDGET_S:.2f}x of the {BUDGET_S * 1000:.0f} ms budget")
    banned = [m for m in runs[0]["heavy"] if not m.startswith("numpy")]
    has_numpy = any(m.startswith("numpy") for m in runs[0]["heavy"])
    print(f"  modules imported by the plugin: {runs[0]['modules']}; torch/transformers/sentence_transformers/"
          f"rasterio/hnswlib: {banned or 'none'}; numpy: {'yes' if has_numpy else 'no'}")
    return 0 if max(totals) <= BUDGET_S and not banned else 1


if __name__ == "__main__":
    sys.exit(main())
