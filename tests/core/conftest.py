"""Fixtures shared by the engine tests: a tiny random-weight LLaVA for real transformers code, and the
session's one local Ray head for the Ray executor and job-mode modules."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls on a shared 2-core machine: OpenMP spinning of 2 threads costs 10x; use one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory) -> str:
    """A tiny LLaVA (real processor, chat template, saved weights) built once per test session."""
    from tiny_vlm import build_tiny_llava

    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny_llava")))


@pytest.fixture(scope="session")
def ray_cluster(request):
    """The session's one local Ray head (`ray_cluster.SHARED_HEAD`): {address, port, url, token, tmp,
    env, shared}. Started on first use, stopped right after the last test that uses it."""
    pytest.importorskip("ray.data", reason="ray[data] is not installed (the engine's 'cluster' extra)")
    from tests.core.ray_cluster import SHARED_HEAD

    users = [item.nodeid for item in request.session.items if "ray_cluster" in getattr(item, "fixturenames", ())]
    SHARED_HEAD.last_user = users[-1] if users else None
    try:
        yield SHARED_HEAD.start()
    finally:
        SHARED_HEAD.stop()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem) -> None:
    """Stop the shared Ray head once its last user is done: the rest of the session runs without it."""
    shared = sys.modules.get("tests.core.ray_cluster")
    head = getattr(shared, "SHARED_HEAD", None)
    if head is not None and head.info is not None and item.nodeid == head.last_user:
        head.stop()
