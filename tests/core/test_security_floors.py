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


def test_torch_floor() -> None:
    assert _floor(engine_commands.TORCH_SPEC.replace(",", "\n"), "torch") >= (2, 10)
    assert "torch==" in (ROOT / "scripts/setup.sh").read_text()


def test_trust_remote_code_is_not_an_option() -> None:
    with pytest.raises(EngineError, match="does not take option.*trust_remote_code"):
        make_captioner("transformers:some/model", trust_remote_code=True)
