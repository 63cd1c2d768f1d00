"""Each project's own index folder: `<project name>.search/` beside the project file.

Why derived from the file name: two projects never share an index (a folder belongs to the project
file that created it, written in `project.json` inside it), a moved project folder keeps its index,
and "Save As" gets a copy rather than a shared folder. An unsaved project works in a temporary folder
that `adopt_index_on_save` moves beside the file on the first save. The folder is also recorded in
the project (relative path) so other tools can find it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

from qgis.core import QgsProject

SCOPE = "semantic_imagery_search"
ENTRY = "index_dir"
OWNER_FILE = "project.json"
TEMP_PREFIX = "sis-unsaved-"


def _project(project: Optional[QgsProject]) -> QgsProject:
    return project or QgsProject.instance()


def _project_file(project: QgsProject) -> str:
    path = project.absoluteFilePath() or project.fileName()
    return os.path.abspath(path) if path else ""


def _owner(folder: str) -> Optional[str]:
    try:
        with open(os.path.join(folder, OWNER_FILE), encoding="utf-8") as f:
            return str(json.load(f).get("project") or "") or None
    except (OSError, ValueError, AttributeError):
        return None


def _claim(folder: str, project_file: str) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, OWNER_FILE), "w", encoding="utf-8") as f:
        json.dump({"project": project_file}, f)


def default_index_dir(project_file: str) -> str:
    """`<dir>/<name>.search`; `<dir>/<name>_<ext>.search` when a sibling project (a.qgs vs a.qgz) owns the first."""
    folder, fname = os.path.split(os.path.abspath(project_file))
    stem, ext = os.path.splitext(fname)
    first = os.path.join(folder, f"{stem}.search")
    owner = _owner(first)
    if owner and os.path.normcase(owner) != os.path.normcase(os.path.abspath(project_file)) and os.path.exists(owner):
        return os.path.join(folder, f"{stem}_{ext.lstrip('.')}.search")
    return first


def recorded_index_dir(project: Optional[QgsProject] = None) -> Optional[str]:
    """The folder written in the project (absolute), or None."""
    project = _project(project)
    value, ok = project.readEntry(SCOPE, ENTRY, "")
    if not ok or not value:
        return None
    if os.path.isabs(value):
        return value
    base = os.path.dirname(_project_file(project)) or os.getcwd()
    return os.path.normpath(os.path.join(base, value))


def _record(project: QgsProject, folder: str) -> None:
    """Write the entry without turning a clean project dirty (the folder follows from the file name anyway)."""
    pf = _project_file(project)
    value = folder
    if pf:
        rel = os.path.relpath(folder, os.path.dirname(pf))
        value = rel if not rel.startswith("..") else folder
    current, _ok = project.readEntry(SCOPE, ENTRY, "")
    if current == value:
        return
    was_dirty = project.isDirty()
    project.writeEntry(SCOPE, ENTRY, value)
    if not was_dirty and pf:
        project.setDirty(False)


def _is_temp(folder: Optional[str]) -> bool:
    return bool(folder) and os.path.basename(os.path.normpath(str(folder))).startswith(TEMP_PREFIX)


def _has_index(folder: Optional[str]) -> bool:
    """An index is its database; a lost manifest is rebuilt from it by the next update."""
    return bool(folder) and any(os.path.isfile(os.path.join(str(folder), n)) for n in ("index.sqlite", "manifest.json"))


def index_dir_for_project(project: Optional[QgsProject] = None) -> str:
    """The project's index folder, created if needed (a temporary one while the project is unsaved)."""
    project = _project(project)
    pf = _project_file(project)
    recorded = recorded_index_dir(project)
    if not pf:
        if recorded and _is_temp(recorded) and os.path.isdir(recorded):
            return recorded
        folder = tempfile.mkdtemp(prefix=TEMP_PREFIX)
        _record(project, folder)
        return folder
    target = default_index_dir(pf)
    if recorded and os.path.normcase(recorded) != os.path.normcase(target) and not _has_index(target):
        # "Save As", a first save the dock did not see, or a renamed file: carry the index over.
        if _is_temp(recorded) and _has_index(recorded):
            _move(recorded, target)
        elif _has_index(recorded):
            shutil.copytree(recorded, target, dirs_exist_ok=True)
    _claim(target, pf)
    _record(project, target)
    return target


def _move(src: str, dst: str) -> None:
    if os.path.isdir(dst):
        shutil.rmtree(dst)  # the index of the project file that was just overwritten
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.move(src, dst)


def adopt_index_on_save(project: Optional[QgsProject] = None) -> Optional[str]:
    """After a save: move a temporary index beside the project file; the new folder, or None if unchanged."""
    project = _project(project)
    pf = _project_file(project)
    if not pf:
        return None
    recorded = recorded_index_dir(project)
    target = default_index_dir(pf)
    if recorded and os.path.normcase(recorded) == os.path.normcase(target):
        return None
    if recorded and _is_temp(recorded) and _has_index(recorded):
        _move(recorded, target)
    elif recorded and _is_temp(recorded) and os.path.isdir(recorded):
        shutil.rmtree(recorded, ignore_errors=True)
    return index_dir_for_project(project)
