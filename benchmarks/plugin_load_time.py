"""Plugin load time: classFactory + initGui in a fresh QGIS process (budget 0.5 s), and what it imports.

Runs N fresh interpreters so the number includes the cold import of the plugin's modules, the way
QGIS pays it at start-up. Prints the median, the worst run and the ratio to the 0.5 s budget.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from plugin_loader import probe_fresh_load  # noqa: E402

BUDGET_S = 0.5
RUNS = int(os.environ.get("RUNS", "5"))

def main() -> int:
    try:
        runs = [probe_fresh_load() for _ in range(RUNS)]
    except RuntimeError as exc:
        print(exc)
        return 1
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
