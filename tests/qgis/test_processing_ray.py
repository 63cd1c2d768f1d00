"""The build algorithm's Ray options: an advanced address parameter that turns into the worker's
executor arguments (the Ray run itself is tested in tests/core/test_ray_executor.py)."""

from __future__ import annotations

from qgis.core import QgsProcessingParameterDefinition

from plugin.processing.build_index import BuildIndexAlgorithm, ray_options


def test_ray_address_parameter_and_executor_arguments(qgis_app):
    alg = BuildIndexAlgorithm()
    alg.initAlgorithm()
    for name in ("RAY_ADDRESS", "CAPTION_WORKERS"):
        p = alg.parameterDefinition(name)
        assert p is not None and p.flags() & QgsProcessingParameterDefinition.FlagAdvanced
    assert alg.parameterDefinition("RAY_ADDRESS").defaultValue() == ""
    assert ray_options("", 4) == {}  # this computer: the local executor
    assert ray_options("local", 0) == {"executor": "ray", "executor_options": {}}
    assert ray_options("10.0.0.5:6379", 8) == {"executor": "ray",
                                               "executor_options": {"address": "10.0.0.5:6379", "caption_workers": 8}}


def test_job_mode_path_map_and_token_parameters(qgis_app):
    import os

    import pytest
    from qgis.core import QgsApplication, QgsProcessingException

    from plugin.gui.settings.cluster_settings import store_ray_token
    from plugin.processing.build_index import ray_token_env

    alg = BuildIndexAlgorithm()
    alg.initAlgorithm()
    for name in ("RAY_DASHBOARD", "SHARED_DIR", "PATH_MAP", "RAY_AUTHCFG"):
        p = alg.parameterDefinition(name)
        assert p is not None and p.flags() & QgsProcessingParameterDefinition.FlagAdvanced
    assert ray_options("", 0, "http://head:8265", "s3://b/stage", "/mnt/nas=s3://b/nas; D:\\o=/o") == {
        "executor": "ray-job", "executor_options": {"dashboard_url": "http://head:8265", "shared_dir": "s3://b/stage",
                                                    "path_map": [["/mnt/nas", "s3://b/nas"], ["D:\\o", "/o"]]}}
    assert ray_options("h:6379", 2, path_map="/a=/b")["executor_options"] == {
        "address": "h:6379", "path_map": [["/a", "/b"]], "caption_workers": 2}
    for args, words in ((("h:1", 0, "http://h:8265", "/s"), "not both"), (("", 0, "http://h:8265", ""), "shared folder"),
                        (("", 0, "", "", "/a=/b"), "Ray cluster or a Ray job"), (("h:1", 0, "", "", "/a"), "LOCAL")):
        with pytest.raises(QgsProcessingException) as e:
            ray_options(*args)
        assert words in str(e.value) and "\n" not in str(e.value)
    # the token: from the authentication database into the worker's environment, nowhere else
    assert QgsApplication.authManager().setMasterPassword("pytest-master-password", True)
    token = "raytok-processing-91d2c3"
    env = ray_token_env(store_ray_token(token))
    assert env["RAY_AUTH_TOKEN"] == token and env["RAY_AUTH_MODE"] == "token" and env["PATH"] == os.environ["PATH"]
    assert ray_token_env("") is None
    with pytest.raises(QgsProcessingException):
        ray_token_env("nosuch1")


def test_processing_progress_text_carries_rate_and_eta(qgis_app):
    from qgis.core import QgsProcessingFeedback

    from plugin.processing.common import progress_to_feedback

    class Feedback(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.texts = []

        def setProgressText(self, text):  # noqa: N802 (QGIS API)
            self.texts.append(text)

    fb = Feedback()
    on_event = progress_to_feedback(fb)
    on_event({"event": "progress", "done": 0, "total": 0, "message": "starting workers 0/2 ready", "phase": "starting",
              "ready": 0, "workers": 2})
    on_event({"event": "progress", "done": 40, "total": 40, "message": "a: 8 tiles", "phase": "captioning",
              "rate": 0.5, "eta_s": 0.0})
    assert fb.texts == ["starting workers 0/2 ready", "captioned 40/40 tiles · 2.0 s/tile · about 0 s left"]
    assert fb.progress() == 100.0
