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
