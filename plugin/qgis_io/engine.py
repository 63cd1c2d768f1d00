"""Which Python interpreter runs the engine worker.

QGIS's own Python never imports torch, so the engine runs in another interpreter: the one chosen in
the settings, else the environment "Set up engine" created in the QGIS profile, else the plugin's own
`.venv` (what `make setup` builds), else `python3` on PATH.
"""

from __future__ import annotations

import os
import shutil
import sys

from qgis.core import QgsSettings

from ..core.env.engine_commands import venv_python

SETTINGS_KEY = "semantic_imagery_search/engine_python"
#: The plugin's root folder (metadata.txt, `plugin/`, and in a checkout `.venv/`).
PLUGIN_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def engine_python() -> str:
    """The interpreter for the worker process (a path; not checked for packages here)."""
    chosen = str(QgsSettings().value(SETTINGS_KEY, "") or "").strip()
    if chosen:
        return os.path.expanduser(chosen)
    # a cleared setting falls back to what "Set up engine" created in the profile, when it is there
    from qgis.core import QgsApplication

    profile = venv_python(os.path.join(QgsApplication.qgisSettingsDirPath(), "semantic_imagery_search", "engine"))
    if os.path.isfile(profile):
        return profile
    local = venv_python(os.path.join(PLUGIN_ROOT, ".venv"))
    if os.path.isfile(local):
        return local
    for name in ("python3", "python"):
        found = shutil.which(name)
        if found:
            return found
    return sys.executable
