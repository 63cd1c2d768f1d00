#!/usr/bin/env python3
"""Build an engine environment exactly the way the *Set up engine...* dialog does, for the engine tests.

    python scripts/engine_env.py --dir build/engine [--torch-source pypi] [--extra cluster] [--test-site DIR]

It calls the dialog's own function (`plugin.core.env.engine_env.create_engine_env`: a venv without
system site packages, the engine lock with hashes, torch from the chosen route, `pip check`, then the
engine check), so CI tests the product a QGIS user installs, not the dev venv. `--test-site DIR` then
installs pytest and the real imagery packages from their own locks into DIR (`pip --target`), outside
the engine: the tests run with PYTHONPATH=DIR, and the engine stays exactly what the dialog built.
Runs on any Python 3.10+ with the standard library only (as QGIS's Python would).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from plugin.core.env import engine_commands as ec  # noqa: E402
from plugin.core.env.engine_env import create_engine_env  # noqa: E402
from plugin.core.errors import EngineError  # noqa: E402

TEST_LOCKS = ("locks/engine-test-lock.txt", "locks/testdata-lock.txt")


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="build/engine", help="the engine folder (created or updated)")
    ap.add_argument("--variant", default="cpu", choices=ec.VARIANTS)
    ap.add_argument("--torch-source", default="pytorch", choices=ec.TORCH_SOURCES)
    ap.add_argument("--find-links", default=None, help="a folder of wheels (no index at all)")
    ap.add_argument("--extra", action="append", default=[], choices=sorted(ec.EXTRAS))
    ap.add_argument("--python", default=None, help="the interpreter that creates the venv (default: this one)")
    ap.add_argument("--test-site", default=None, help="install pytest and the test imagery here (outside the engine)")
    args = ap.parse_args()
    env_dir = Path(args.dir).resolve()
    t0 = time.perf_counter()
    try:
        check = create_engine_env(
            str(env_dir), args.variant, python=args.python or sys.executable, torch_source=args.torch_source,
            find_links=args.find_links, extras=tuple(args.extra),
            progress=lambda done, total, what: print(f"engine: [{done:3d}%] {what}", flush=True),
            log=lambda line: print("   ", line, flush=True) if line.startswith(("$ ", "ERROR", "Successfully")) else None)
    except EngineError as exc:
        print(f"engine: set-up failed: {exc}", file=sys.stderr)
        return 1
    print(check.summary())
    print(f"engine: {env_dir} built in {time.perf_counter() - t0:.0f} s, {folder_mb(env_dir):.0f} MB on disk")
    if not check.ok:
        return 1
    if args.test_site:
        py = ec.venv_python(str(env_dir))
        for lock in TEST_LOCKS:
            subprocess.run(ec.lock_command(py, str(ROOT / lock)) + ["-q", "--upgrade", "--target", args.test_site],
                           check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
