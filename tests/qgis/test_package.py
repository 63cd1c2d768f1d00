"""The release zip (`make package`): contents, metadata, and the plugin loaded from a fresh profile."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import package  # noqa: E402
from plugin_loader import import_plugin_package  # noqa: E402

NAME = package.PLUGIN_NAME


@pytest.fixture(scope="module")
def release_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "package.py"), "zip", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    meta = package.read_metadata()
    path = out / f"{NAME}-{meta['version']}.zip"
    assert res.stdout.startswith(str(path)) and path.is_file()
    return path


def test_zip_holds_the_plugin_folder_and_nothing_else(release_zip: Path) -> None:
    with zipfile.ZipFile(release_zip) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
    assert all(n.startswith(f"{NAME}/") for n in names)
    for needed in ("__init__.py", "metadata.txt", "resources/icon.svg", "plugin/plugin.py",
                   "plugin/core/env/engine_env.py", "plugin/core/env/engine_probe.py", "plugin/core/env/engine_requirements.txt",
                   "plugin/tasks/engine_setup_task.py", "plugin/gui/settings/engine_dialog.py"):
        assert f"{NAME}/{needed}" in names, needed
    parts = {p for n in names for p in n.split("/")}
    for banned in ("tests", "benchmarks", "scripts", ".venv", ".git", "__pycache__", ".ci", "Makefile",
                   "pyproject.toml", "requirements-dev.txt", "dist", "build", ".qgis-settings"):
        assert banned not in parts, banned
    assert not [n for n in names if n.endswith((".pyc", ".search", ".log")) or "/." in n]
    # every Python module of the plugin package is in the release
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "plugin").rglob("*.py") if "__pycache__" not in p.parts}
    assert on_disk <= {n[len(NAME) + 1:] for n in names}


def test_zip_passes_the_plugin_repository_checks(release_zip: Path, tmp_path: Path) -> None:
    licensed = (ROOT / "LICENSE").is_file()
    problems = package.validate_zip(release_zip)
    assert problems == ([] if licensed else [
        "no LICENSE in the plugin folder (plugins.qgis.org refuses uploads without one: add a GPL-compatible "
        "LICENSE at the repository root)"])
    # a LICENSE at the root goes into the zip; forbidden entries are named
    root = tmp_path / "root"
    for rel in ("__init__.py", "LICENSE", "resources/icon.svg", "plugin/__init__.py", "plugin/__pycache__/x.pyc"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "metadata.txt").write_text((ROOT / "metadata.txt").read_text())
    built = package.build_zip(tmp_path / "out", root)
    assert package.validate_zip(built) == []
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("xy/__init__.py", "")
        zf.writestr("xy/metadata.txt", "")
        zf.writestr("xy/LICENSE", "")
        zf.writestr("xy/.git/config", "")
    assert package.validate_zip(bad) == ["forbidden entry xy/.git/config"]


def test_metadata_inside_is_complete(release_zip: Path) -> None:
    with zipfile.ZipFile(release_zip) as zf:
        text = zf.read(f"{NAME}/metadata.txt").decode("utf-8")
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    meta = cp["general"]
    for key in package.REQUIRED_METADATA:
        assert meta.get(key, "").strip(), key
    assert release_zip.name == f"{NAME}-{meta['version']}.zip"
    assert float(meta["qgisMinimumVersion"]) >= 3.22
    for dep in ("torch", "sentence-transformers", "hnswlib", "rasterio"):
        assert dep in meta["about"], dep
    assert meta["repository"].startswith("https://") and meta["tracker"].startswith("https://")


def test_incomplete_metadata_is_refused(tmp_path: Path) -> None:
    (tmp_path / "metadata.txt").write_text("[general]\nname=x\nversion=1.0\n")
    with pytest.raises(package.PackageError, match="metadata.txt lacks qgisMinimumVersion, description"):
        package.read_metadata(tmp_path)


def _forget_package() -> dict:
    return {k: sys.modules.pop(k) for k in list(sys.modules) if k == NAME or k.startswith(NAME + ".")}


def test_plugin_loads_from_the_zip_in_a_fresh_profile(release_zip: Path, tmp_path: Path, qgis_iface) -> None:
    from qgis.PyQt.QtWidgets import QAction

    plugins = tmp_path / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(release_zip) as zf:
        zf.extractall(plugins)
    folder = plugins / NAME
    assert (folder / "metadata.txt").is_file() and not (folder / "tests").exists()
    saved = _forget_package()
    try:
        mod = import_plugin_package(folder, NAME)
        plugin = mod.classFactory(qgis_iface)
        assert Path(sys.modules[f"{NAME}.plugin.plugin"].__file__).is_relative_to(folder)
        plugin.initGui()
        try:
            texts = {a.text() for a in qgis_iface.mainWindow().findChildren(QAction)}
            assert {"Set up engine…", "Check engine"} <= texts
            assert plugin.engine_banner is not None and plugin.dock is not None
        finally:
            plugin.unload()
        assert plugin.engine_actions == [] and plugin.dock is None
    finally:
        _forget_package()
        sys.modules.update(saved)


def test_install_links_the_working_tree_and_demo_project_opens(tmp_path: Path, s2_dir: Path) -> None:
    from qgis.core import QgsProject

    prof = tmp_path / "profile"
    link = package.install_link(prof)
    assert link.is_symlink() and link.resolve() == ROOT.resolve()
    assert package.install_link(prof) == link  # re-linking is fine
    ini = package.enable_in_profile(prof, "/opt/engine/bin/python")
    text = ini.read_text()
    assert "[PythonPlugins]" in text and f"{NAME}=true" in text and "engine_python=/opt/engine/bin/python" in text

    demo = package.build_demo(tmp_path / "demo", str(s2_dir))
    project = QgsProject()
    assert project.read(str(demo))
    layers = list(project.mapLayers().values())
    assert len(layers) == 1 and layers[0].isValid()
    assert layers[0].bandCount() == 4 and layers[0].width() > 1900
    assert layers[0].crs().authid() == "EPSG:32618" and project.crs().authid() == "EPSG:32618"
    assert project.viewSettings().defaultViewExtent() == layers[0].extent()  # opens on the scene, not at 1:1


def test_demo_command_prepares_profile_project_and_dock_script(tmp_path: Path, capsys) -> None:
    assert package.main(["demo", "--out", str(tmp_path)]) == 0
    start = capsys.readouterr().out.splitlines()[-1]
    assert start == (f"start: qgis --profiles-path {tmp_path} --profile demo --project {tmp_path / 'demo.qgz'} "
                     f"--code {tmp_path / 'show_dock.py'}")
    # QGIS looks for <profiles-path>/profiles/<name>
    prof = tmp_path / "profiles" / "demo"
    assert (prof / "python" / "plugins" / NAME).resolve() == ROOT.resolve()
    assert f"{NAME}=true" in (prof / "QGIS" / "QGIS3.ini").read_text()
    compile((tmp_path / "show_dock.py").read_text(), "show_dock.py", "exec")
