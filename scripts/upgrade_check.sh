#!/usr/bin/env bash
# `make upgrade-check`: what the newest releases the requirement ranges allow would break, before the
# lock moves. A scratch venv (same base as the dev venv: Debian's Python 3.11 with PyQGIS and numpy
# 1.24.2) gets the ranges, not the lock; then the VLM family matrix and the core tests run there and
# a short report names the versions that differ from the lock and the tests that fail.
#   bash scripts/upgrade_check.sh [VENV]     (default build/upgrade-check; report.txt inside it)
set -uo pipefail
export LC_ALL=C  # join and sort must agree on the order
cd "$(dirname "$0")/.."
VENV=${1:-build/upgrade-check}
SYS_PY=${SYS_PY:-/usr/bin/python3.11}
REPORT="$VENV/report.txt"
rm -rf "$VENV"
"$SYS_PY" -m venv --system-site-packages "$VENV" || exit 1
pip_install() { "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v "is ignored" >&2); }
echo "upgrade-check: installing the newest versions the ranges allow into $VENV"
pip_install --upgrade --upgrade-strategy eager -c locks/debian-system.txt "$(grep -v '^#' locks/dev-torch.in)" \
  -r requirements.txt -r requirements-dev.txt -r plugin/core/env/engine_requirements_cluster.txt || exit 1
pip_install --require-hashes --no-deps -r locks/testdata-lock.txt || exit 1
"$VENV/bin/python" -m pip freeze 2>/dev/null | sort > "$VENV/freeze.txt"
{
  echo "upgrade-check $(date -u +%Y-%m-%dT%H:%MZ): newest allowed versions vs locks/dev-lock.txt"
  grep -E '^[A-Za-z0-9._-]+==' locks/dev-lock.txt | sed 's/ .*//' | sort > "$VENV/locked.txt"
  join -t= -j1 <(sed 's/==/=/' "$VENV/locked.txt" | tr '[:upper:]_' '[:lower:]-' | sort) \
               <(sed 's/==/=/' "$VENV/freeze.txt" | tr '[:upper:]_' '[:lower:]-' | sort) |
    awk -F= '$2 != $3 {print "  moved: " $1 " " $2 " -> " $3}'
} > "$REPORT"
echo "upgrade-check: VLM family matrix and core tests on the newest versions"
QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/core \
  -k "not ray" > "$VENV/pytest.log" 2>&1
rc=$?
{
  echo "tests: $(tail -1 "$VENV/pytest.log")"
  grep -E '^(FAILED|ERROR) ' "$VENV/pytest.log" | sed 's/^/  /' | head -50
  [ $rc = 0 ] && echo "nothing broke: move the lock with make lock, then make test" \
              || echo "something broke: fix it on the newest versions, or narrow the range, before make lock"
} >> "$REPORT"
cat "$REPORT"
exit $rc
