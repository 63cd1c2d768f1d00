"""Settings "Run indexing on": the cluster options, Test cluster, and the Ray token's one path
(QgsAuthManager -> the job worker's environment; never argv, the request, settings, logs)."""

from __future__ import annotations

import json
import socket
import time

import pytest
from qgis.core import QgsApplication, QgsSettings

from plugin.gui.settings.cluster_settings import (
    ClusterOptions,
    load_cluster_options,
    save_cluster_options,
    store_ray_token,
)
from tests.qgis.plugin_harness import (
    add_raster,
    engine_env,
    load_plugin,
    set_spectral,
    wait_until,
    write_generated_raster,
)

MASTER = "pytest-master-password"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings_text() -> str:
    QgsSettings().sync()
    return open(QgsSettings().fileName(), encoding="utf-8", errors="replace").read()


def test_cluster_options_become_executor_arguments(qgis_app) -> None:
    assert ClusterOptions().executor_args() == {}
    o = ClusterOptions(run_on="ray", address="10.0.0.5:6379", caption_workers=8,
                       path_map="/mnt/nas = s3://bucket\n\nD:\\ortho=/shared/ortho")
    assert o.executor_args() == {"executor": "ray", "executor_options": {
        "address": "10.0.0.5:6379", "caption_workers": 8,
        "path_map": [["/mnt/nas", "s3://bucket"], ["D:\\ortho", "/shared/ortho"]]}}
    assert ClusterOptions(run_on="ray", address="local").executor_args() == {"executor": "ray", "executor_options": {}}
    job = ClusterOptions(run_on="ray-job", dashboard_url="http://head:8265", shared_dir="s3://bucket/stage")
    assert job.executor_args() == {"executor": "ray-job",
                                   "executor_options": {"dashboard_url": "http://head:8265", "shared_dir": "s3://bucket/stage"}}
    for bad, words in ((ClusterOptions(run_on="ray"), "address"), (ClusterOptions(run_on="ray-job"), "dashboard URL"),
                       (ClusterOptions(run_on="ray-job", dashboard_url="http://h:8265"), "shared folder"),
                       (ClusterOptions(run_on="ray", address="h:1", path_map="/a"), "path map line 1")):
        with pytest.raises(ValueError) as e:
            bad.executor_args()
        assert words in str(e.value) and "\n" not in str(e.value)
    assert ClusterOptions(run_on="ray", address="h:1").worker_env() is None  # no token chosen: QGIS's environment


def test_settings_dialog_stores_the_token_and_test_cluster_answers_in_one_line(qgis_iface) -> None:
    from plugin.gui.settings.settings_dialog import SettingsDialog

    engine_env()
    assert QgsApplication.authManager().setMasterPassword(MASTER, True)
    before = load_cluster_options()
    token = "raytok-dialog-5c1d0e7f9a"
    dlg = SettingsDialog()
    c = dlg.cluster
    try:
        c.run_on.setCurrentIndex(c.run_on.findData("ray"))
        assert c.address_edit.isVisibleTo(dlg) and not c.dashboard_edit.isVisibleTo(dlg)
        assert c.test_button.isEnabled() and c.map_table.isEnabled()
        port = _closed_port()
        c.address_edit.setText(f"127.0.0.1:{port}")
        c.add_mapping("/data/ortho", "s3://bucket/ortho")
        c.workers_spin.setValue(4)
        c.token_edit.setText(token)
        t0 = time.monotonic()
        assert c.test_cluster()  # starts a task: the dialog is not blocked
        assert time.monotonic() - t0 < 2.0 and not c.test_button.isEnabled()
        assert c.result_label.text().startswith("Testing")
        wait_until(lambda: c.task is None, 120, "the cluster check")
        text = c.result_label.text()
        assert text.startswith(f"✖ cannot reach the Ray cluster at 127.0.0.1:{port}") and "\n" not in text, text
        assert c.test_button.isEnabled() and token not in text
        assert c.token_edit.text() == "" and "stored" in c.token_edit.placeholderText()
        c.run_on.setCurrentIndex(c.run_on.findData("ray-job"))
        assert c.dashboard_edit.isVisibleTo(dlg) and c.shared_edit.isVisibleTo(dlg) and not c.address_edit.isVisibleTo(dlg)
        c.run_on.setCurrentIndex(c.run_on.findData("ray"))
        dlg.accept()
        saved = load_cluster_options()
        assert (saved.run_on, saved.address, saved.path_map, saved.caption_workers) == \
            ("ray", f"127.0.0.1:{port}", "/data/ortho=s3://bucket/ortho", 4)
        assert saved.authcfg and saved.worker_env({})["RAY_AUTH_TOKEN"] == token
        assert token not in _settings_text()
    finally:
        save_cluster_options(before)


def test_dock_progress_line_shows_each_phase(qgis_app):
    """The status line for each phase the task reports (what the user reads while a job runs)."""
    from plugin.gui.index.index_progress import IndexProgressView

    class Widget:
        def set_progress(self, text, done, total):
            self.text = text

        def set_state(self, key, state):
            pass

    class Session:
        job_text = ""

        def status_text(self):
            return self.job_text

    w, lines = Widget(), []
    view = IndexProgressView(w, Session(), lines.append, lambda: True)
    view.start(["k"], {"k": "a"}, "on Ray cluster 10.0.0.5:6379")
    view.on_phase({"phase": "starting", "message": "starting workers 1/4 ready", "ready": 1, "workers": 4})
    assert w.text.startswith("Starting workers: 1/4 ready (loading models) · on Ray cluster 10.0.0.5:6379 · ")
    view.on_phase({"phase": "captioning", "message": "a: 8 tiles", "done": 120, "total": 3000, "rate": 2.0,
                   "eta": 1440.0, "raster": "a"})
    assert w.text.startswith("Captioned 120/3,000 tiles · 2.0 tiles/s · about 24 min 00 s left · 1/4 workers · on Ray")
    assert lines[-1].startswith("Indexing: Captioned 120/3,000")
    # the pool grows while tiles are captioned: the counts stay, the workers move
    view.on_phase({"phase": "starting", "message": "starting workers 4/4 ready", "ready": 4, "workers": 4})
    assert w.text.startswith("Captioned 120/3,000 tiles · 2.0 tiles/s · about 24 min 00 s left · 4/4 workers · on Ray")
    view.on_phase({"phase": "planning", "message": "planning 2 raster(s)"})
    assert w.text.startswith("Planning 2 raster(s) · on Ray cluster")
    view.stop()


@pytest.mark.slow
def test_ray_token_reaches_the_job_worker_through_its_environment_only(qgis_iface, qgis_new_project, tmp_path) -> None:
    """The dock's index job with "Run on: Ray cluster": the token is read from QgsAuthManager when the
    job starts and is in the worker's environment, never in its command line, its request, the
    settings, the QGIS log or the job's error; the job fails in one line (nothing listens there)."""
    from qgis.core import Qgis

    engine_env()
    assert QgsApplication.authManager().setMasterPassword(MASTER, True)
    before = load_cluster_options()
    token = "raytok-env-" + "3f9a" * 6
    port = _closed_port()
    save_cluster_options(ClusterOptions(run_on="ray", address=f"127.0.0.1:{port}", authcfg=store_ray_token(token),
                                        path_map=f"{tmp_path}=/cluster/share"))
    logged: list[str] = []
    QgsApplication.messageLog().messageReceived.connect(lambda msg, tag, level: logged.append(f"{tag}: {msg}"))
    plugin = load_plugin(qgis_iface)
    try:
        layer = add_raster(write_generated_raster(str(tmp_path / "g.tif")), "g")
        set_spectral(plugin)
        plugin.dock.index_widget.set_checked(layer.id(), True)
        ctl = plugin.index_ctl
        done: list[dict] = []
        assert ctl.start_index()
        task = ctl.task
        task.index_finished.connect(done.append)
        wait_until(lambda: task.client.proc is not None or done, 60, "the job's worker process")
        pid = task.client.proc.pid
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        assert token.encode() not in cmdline
        assert f"RAY_AUTH_TOKEN={token}".encode() in environ and b"RAY_AUTH_MODE=token" in environ
        assert token not in json.dumps(task.args)
        assert task.args["executor"] == "ray" and task.args["executor_options"] == {
            "address": f"127.0.0.1:{port}", "path_map": [[str(tmp_path), "/cluster/share"]]}
        assert f"on Ray cluster 127.0.0.1:{port}" in plugin.session.job_text
        wait_until(lambda: bool(done) and ctl.task is None, 240, "the job")
        error = str(done[0].get("error") or "")
        assert error.startswith(f"cannot reach the Ray cluster at 127.0.0.1:{port}") and "\n" not in error, done[0]
        crit = qgis_iface.messageBar().get_messages(Qgis.Critical)
        assert crit and all(token not in m for m in crit)
        assert token not in task.client.stderr_tail and all(token not in m for m in logged)
        assert token not in _settings_text()
    finally:
        save_cluster_options(before)
        plugin.unload()
