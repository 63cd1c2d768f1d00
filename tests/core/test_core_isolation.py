"""plugin/core must run without Qt or QGIS (worker process, GPU server)."""

import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_core_imports_no_qt_or_qgis():
    import plugin.core as core

    modules = sorted(
        m.name for m in pkgutil.walk_packages(core.__path__, prefix="plugin.core.") if not m.name.endswith("__main__")
    )
    assert "plugin.core.types" in modules
    code = (
        "import importlib, sys\n"
        f"mods = {modules!r}\n"
        "for m in mods: importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('qgis', 'PyQt5', 'PyQt6', 'sip'))\n"
        "print('BAD', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
