"""Security floors of the engine's requirements, and remote code that can never be switched on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from plugin.core.captioners import make_captioner
from plugin.core.env import engine_commands
from plugin.core.errors import EngineError

ROOT = Path(__file__).resolve().parents[2]


def _floor(spec_text: str, name: str) -> tuple[int, ...]:
    m = re.search(rf"^{re.escape(name)}>=([\d.]+)", spec_text, re.M)
    assert m, f"no floor for {name}"
    return tuple(int(p) for p in m.group(1).split("."))


@pytest.mark.parametrize("path", ["plugin/core/env/engine_requirements.txt", "requirements.txt"])
def test_requirement_floors_refuse_unsafe_deserialisation(path: str) -> None:
    text = (ROOT / path).read_text()
    assert _floor(text, "transformers") >= (4, 52)  # refuses torch.load of .bin on torch < 2.6
    assert _floor(text, "sentence-transformers") >= (3, 1)  # its own .bin modules load weights-only


def _pins(text: str, name: str) -> list[tuple[int, ...]]:
    """Every exact version of `name` in a lock (a universal lock can hold one per Python range)."""
    found = re.findall(rf"^{re.escape(name)}==(\d+(?:\.\d+)*)", text, re.M)
    assert found, f"{name} is not locked"
    return [tuple(int(p) for p in v.split(".")) for v in found]


def test_torch_floor() -> None:
    assert _pins(engine_commands.ENGINE_TORCH, "torch") == [(2, 13, 0)]
    assert min(_pins((ROOT / "locks/dev-lock.txt").read_text(), "torch")) >= (2, 10)


@pytest.mark.parametrize("lock", ["plugin/core/env/engine_lock.txt", "plugin/core/env/engine_lock_cluster.txt", "locks/dev-lock.txt"])
def test_every_lock_installs_versions_above_the_floors(lock: str) -> None:
    text = (ROOT / lock).read_text()
    assert min(_pins(text, "transformers")) >= (4, 52)
    assert min(_pins(text, "sentence-transformers")) >= (3, 1)
    assert "--hash=sha256:" in text and "torch==" not in text.replace("torch==2.13.0+cpu", ""), "hashed; torch only in dev"


def test_trust_remote_code_is_not_an_option() -> None:
    with pytest.raises(EngineError, match="does not take option.*trust_remote_code"):
        make_captioner("transformers:some/model", trust_remote_code=True)
