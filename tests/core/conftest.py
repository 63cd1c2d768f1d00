"""Fixtures shared by the tests that run real transformers code on a tiny random-weight LLaVA."""

from __future__ import annotations

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
