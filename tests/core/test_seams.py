"""The engine's seams stay explicit (issue 22): every executor hook is declared with a default and called
without probing, and no module imports another module's private (`_name`) names."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from plugin.core.indexing import executor as executor_module
from plugin.core.indexing.executor import Executor, ExecutorBase

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> list[Path]:
    return sorted((ROOT / "plugin").rglob("*.py"))


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                found += [f"{path.relative_to(ROOT)}: from {'.' * node.level}{node.module or ''} import {a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "\n".join(found)


def test_the_job_never_probes_an_executor() -> None:
    probes = []
    for path in sorted((ROOT / "plugin" / "core" / "indexing").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                    and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in ("ex", "executor")):
                probes.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.id}({node.args[0].id}, ...)")
    assert not probes, "\n".join(probes)


def test_every_executor_derives_from_the_base_that_declares_each_hook() -> None:
    from plugin.core.indexing.cluster.ray_exec import RayExecutor
    from plugin.core.indexing.cluster.ray_job import RayJobExecutor
    from plugin.core.indexing.local import LocalExecutor

    hooks = {n for n, _ in inspect.getmembers(Executor) if not n.startswith("_")} | set(Executor.__annotations__)
    assert {"run", "close", "prepare", "remove_merged", "on_workers", "notify", "streams_whole_job"} <= hooks
    base = ExecutorBase()
    for name in hooks:
        assert hasattr(base, name), f"ExecutorBase has no default for {name}"
    assert base.prepare([], None) is None and base.remove_merged(lambda rid: set()) is None and base.close() is None
    base.notify("nobody listens")  # the default takes a line and does nothing
    for cls in (LocalExecutor, RayExecutor, RayJobExecutor):
        assert issubclass(cls, ExecutorBase), cls
    assert not LocalExecutor.streams_whole_job and RayExecutor.streams_whole_job and RayJobExecutor.streams_whole_job
    assert executor_module.EXECUTORS == ("local", "ray", "ray-job")


def test_one_rule_for_offline_and_one_first_line(monkeypatch) -> None:
    from plugin.core.captioners.base import offline
    from plugin.core.errors import EngineError, first_line, hub_offline

    for value, want in (("1", True), ("true", True), ("ON", True), ("0", False), ("false", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        assert hub_offline() is want and offline() is want, value  # clip_baseline read "false" as offline
    assert first_line(EngineError("\n  bad band map: 5 > 4\n  details: ...")) == "bad band map: 5 > 4"
    assert first_line(ValueError()) == "ValueError" and first_line("") == "unknown error"
    assert len(first_line("x" * 500)) == 300
    for path in sorted((ROOT / "plugin").rglob("*.py")):  # nobody reads the variables but errors.hub_offline
        text = path.read_text(encoding="utf-8")
        if path.name != "errors.py":
            assert 'os.environ.get("HF_HUB_OFFLINE"' not in text, path


def test_captioner_kinds_come_from_one_registry() -> None:
    import pytest

    from plugin.core.captioners import (
        CAPTIONER_KINDS,
        CaptionerKind,
        make_captioner,
        preflight_captioner,
        register_captioner,
    )
    from plugin.core.errors import EngineError

    assert list(CAPTIONER_KINDS) == ["spectral", "transformers", "openai", "vllm", "python"]
    assert [k.name for k in CAPTIONER_KINDS.values() if k.needs_server] == ["openai"]
    with pytest.raises(EngineError, match=r"unknown captioner 'echo:x'; use spectral, transformers:<model>, "
                                          r"openai:<base_url>#<model> or python:<module>:<factory>"):
        make_captioner("echo:x")
    built: list = []
    register_captioner(CaptionerKind("echo", "echo:<word>", lambda spec, target, common, options:
                                     built.append((target, common["variants"], options)) or "an echo captioner"))
    try:
        assert make_captioner("echo:hello", variants=2, colour="blue") == "an echo captioner"
        assert built == [("hello", 2, {"colour": "blue"})]
        notes: list = []
        preflight_captioner("echo:hello", {}, notes.append, lambda: False)  # no server: nothing checked, nothing built
        assert notes == [] and len(built) == 1
    finally:
        CAPTIONER_KINDS.pop("echo")
