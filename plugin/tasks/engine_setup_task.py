"""QgsTask shells for "Set up engine" and "Check engine".

Both run a pure function of `core.env.engine_env` off the main thread (pip can take minutes, importing
torch in the probe takes seconds). The environment goes into the QGIS profile folder, which every
user can write to, so no admin rights are needed. Log lines are emitted as they come (queued to the
main thread) and also written to `engine-setup.log` beside the environment for troubleshooting.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from qgis.core import QgsApplication, QgsSettings, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.env import engine_env
from ..core.errors import Canceled, first_line
from ..qgis_io.engine import SETTINGS_KEY


def engine_home() -> str:
    """`<QGIS profile>/semantic_imagery_search`: the plugin's writable folder in the user's profile."""
    return os.path.join(QgsApplication.qgisSettingsDirPath(), "semantic_imagery_search")


def default_engine_dir() -> str:
    """Where "Set up engine" creates the engine's virtual environment."""
    return os.path.join(engine_home(), "engine")


def _first_line(exc: BaseException) -> str:
    return first_line(exc)


class EngineSetupTask(QgsTask):
    """Create (or update) the engine environment, then check it.

    `setup_finished(dict)` carries the check (`EngineCheck.to_dict()` plus "env_dir"), or
    {"error": one line} / {"canceled": True}. On a passing check the engine Python setting points
    at the new environment, so the next search or index job uses it.
    """

    log_line = pyqtSignal(str)
    setup_finished = pyqtSignal(dict)

    def __init__(self, env_dir: Optional[str] = None, variant: str = "cpu", options: Optional[dict] = None,
                 description: str = "Semantic Imagery Search: set up engine", save_setting: bool = True) -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.env_dir = env_dir or default_engine_dir()
        self.variant = variant
        #: keywords for `engine_env.setup_plan` (requirements, find_links, system_site_packages, ...)
        self.options = dict(options or {})
        self.save_setting = save_setting
        self.log_path = os.path.join(os.path.dirname(os.path.abspath(self.env_dir)), "engine-setup.log")
        self.result: dict[str, Any] = {}
        self._log_file: Any = None

    def _log(self, line: str) -> None:
        if self._log_file is not None:
            self._log_file.write(line + "\n")
            self._log_file.flush()
        self.log_line.emit(line)

    def _progress(self, done: int, total: int, message: str) -> None:
        if total:
            self.setProgress(100.0 * done / total)
        self._log(f"== {message}")

    def run(self) -> bool:
        try:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            self._log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 -- closed in finally
            self._log(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} set up engine ({self.variant}) in {self.env_dir}")
            check = engine_env.create_engine_env(
                self.env_dir, self.variant, progress=self._progress, log=self._log,
                is_canceled=self.isCanceled, **self.options,
            )
            self.result = dict(check.to_dict(), env_dir=self.env_dir, summary=check.summary())
            self._log(check.summary())
            return True
        except Canceled:
            self.result = {"canceled": True}
            return False
        except Exception as exc:  # EngineEnvError is the expected kind; anything else is reported the same way
            self.result = {"error": _first_line(exc), "setup_failed": True}
            self._log(f"ERROR {self.result['error']}")
            return False
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def finished(self, result: bool) -> None:
        if not self.result:
            self.result = {"canceled": True}
        if result and self.save_setting and self.result.get("ok"):
            QgsSettings().setValue(SETTINGS_KEY, self.result["python"])
        self.setup_finished.emit(self.result)


class EngineCheckTask(QgsTask):
    """Probe an interpreter; `check_finished(dict)` carries `EngineCheck.to_dict()` (+ "summary") or {"error"}."""

    check_finished = pyqtSignal(dict)

    def __init__(self, python: str, description: str = "Semantic Imagery Search: check engine") -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.python = python
        self.result: dict[str, Any] = {}

    def run(self) -> bool:
        try:
            check = engine_env.check_engine(self.python)
            self.result = dict(check.to_dict(), summary=check.summary())
            return True
        except Exception as exc:
            self.result = {"error": _first_line(exc), "python": self.python}
            return False

    def finished(self, result: bool) -> None:
        self.check_finished.emit(self.result or {"error": "the check was canceled", "python": self.python})
