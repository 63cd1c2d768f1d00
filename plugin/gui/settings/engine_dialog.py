""""Set up engine" / "Check engine": the dialog, and the dock banner shown while the engine is not ready.

The engine runs in its own Python (see core/env/engine_env.py). This dialog lets the user create that
environment in the QGIS profile (CPU or CUDA torch, defaulting to CUDA when an NVIDIA driver
answers) or point the plugin at an existing interpreter, and shows pip's log as it runs. Both the
set-up and the check run as QgsTasks: the dialog never blocks QGIS, and closing it does not stop a
running set-up (it stays in the task manager).
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Callable, Optional

from qgis.core import QgsApplication, QgsSettings
from qgis.PyQt.QtCore import QTimer, pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ...core.env import engine_commands
from ...qgis_io.engine import SETTINGS_KEY, engine_python
from ...tasks.engine_setup_task import EngineCheckTask, EngineSetupTask, default_engine_dir
from ..layouts import hbox

FIX_HINT = "Plugins › Semantic Imagery Search › Set up engine…"
#: Where torch comes from, as offered in the dialog (engine_commands.TORCH_SOURCES).
SOURCE_WORDS = {
    "pytorch": "PyTorch's package index (download.pytorch.org): the smallest build",
    "pypi": "PyPI only (for networks or proxies that reach PyPI but not PyTorch's index)",
    "folder": "A folder of wheels (offline: every package from that folder)",
}


#: what a usable engine environment must hold (folder or extension-module names in site-packages)
_KEY_PACKAGES = (("torch", "torch"), ("sentence_transformers", "sentence-transformers"), ("hnswlib", "hnswlib"))


def _venv_missing(root: str) -> Optional[list[str]]:
    """Key packages absent from a venv's own site-packages; None when that cannot be told from files
    (the venv also sees system packages, or a .pth file adds other folders)."""
    try:
        with open(os.path.join(root, "pyvenv.cfg"), encoding="utf-8") as f:
            cfg = f.read().lower().replace(" ", "")
    except OSError:
        return None
    if "include-system-site-packages=true" in cfg:
        return None
    sites = glob.glob(os.path.join(root, "lib", "python3*", "site-packages")) + [os.path.join(root, "Lib", "site-packages")]
    sites = [d for d in sites if os.path.isdir(d)]
    pths = [p for d in sites for p in glob.glob(os.path.join(d, "*.pth"))
            if os.path.basename(p) not in ("distutils-precedence.pth", "_virtualenv.pth")]
    if not sites or pths:
        return None
    return [words for mod, words in _KEY_PACKAGES if not any(glob.glob(os.path.join(d, mod + "*")) for d in sites)]


def quick_engine_problem(python: Optional[str] = None) -> Optional[str]:
    """Why the engine cannot run, from file checks only (no subprocess: safe at plugin start), or None.

    The full answer needs "Check engine" (it imports torch in the engine's Python); this catches the
    common cases at once: nothing set up, a set-up that did not finish, a bare system Python.
    """
    python = python or engine_python()
    if not python or not os.path.isfile(python):
        return f"The search engine is not set up (no Python at {python or 'the configured path'})."
    if not os.access(python, os.X_OK):
        return f"The engine Python is not executable: {python}."
    root = os.path.dirname(os.path.dirname(os.path.abspath(python)))
    if os.path.isfile(os.path.join(root, "pyvenv.cfg")):
        missing = _venv_missing(root)
        if missing:
            return f"The engine environment at {root} lacks {', '.join(missing)} (set-up not finished?)."
        return None
    if not str(QgsSettings().value(SETTINGS_KEY, "") or "").strip():
        return (f"No engine environment is set up yet ({python} is a system Python, which usually lacks "
                "the engine's packages).")
    return None


class EngineDialog(QDialog):
    """Set up or check the engine; `engine_changed(dict)` carries each finished check."""

    engine_changed = pyqtSignal(dict)

    def __init__(self, parent=None, env_dir: Optional[str] = None, gpu: Optional[str] = "detect",
                 setup_options: Optional[dict] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Semantic Imagery Search engine")
        self.setMinimumWidth(680)  # the size and folder lines wrap to a readable height
        self.env_dir = env_dir or default_engine_dir()
        self.setup_options = dict(setup_options or {})
        self.gpu = engine_commands.nvidia_driver() if gpu == "detect" else gpu
        self.task: Optional[EngineSetupTask] = None
        self.check_task: Optional[EngineCheckTask] = None

        intro = QLabel(
            "The engine (PyTorch, sentence-transformers, hnswlib) runs in its own Python environment, "
            "never inside QGIS's Python. Create one here (no admin rights needed), or use an existing one.", self)
        intro.setWordWrap(True)
        self.current_label = QLabel(self)
        self.current_label.setWordWrap(True)

        setup_box = QGroupBox("Create the engine environment", self)
        self.variant_combo = QComboBox(setup_box)
        self.variant_combo.addItem("CPU (works everywhere; Apple GPU through MPS on macOS)", "cpu")
        self.variant_combo.addItem("CUDA (NVIDIA GPU, large download)", "cuda")
        default = "cpu" if sys.platform == "darwin" else ("cuda" if self.gpu else "cpu")
        self.variant_combo.setCurrentIndex(1 if default == "cuda" else 0)
        gpu_words = f"NVIDIA GPU found: {self.gpu}" if self.gpu else "No NVIDIA driver found: the CPU build is suggested"
        self.gpu_label = QLabel(gpu_words, setup_box)
        self.source_combo = QComboBox(setup_box)
        for key in engine_commands.TORCH_SOURCES:
            self.source_combo.addItem(SOURCE_WORDS[key], key)
        self.source_combo.setToolTip("Where pip downloads torch from. The engine's other packages always come "
                                     "from PyPI (or the wheel folder), at the exact versions of the engine lock.")
        self.folder_edit = QLineEdit(setup_box)
        self.folder_edit.setPlaceholderText("folder with the torch wheel and the engine lock's wheels (pip download)")
        self.folder_browse = QPushButton("Browse…", setup_box)
        self.folder_browse.setAutoDefault(False)
        self.folder_row = QWidget(setup_box)
        fl = QHBoxLayout(self.folder_row)
        fl.setContentsMargins(0, 0, 0, 0)
        fl.addWidget(self.folder_edit, 1)
        fl.addWidget(self.folder_browse)
        self.setup_button = QPushButton("Set up engine", setup_box)
        # a large download: never the button Enter presses
        self.setup_button.setAutoDefault(False)
        self.cancel_button = QPushButton("Cancel set-up", setup_box)
        self.cancel_button.setAutoDefault(False)
        self.cancel_button.setEnabled(False)
        self.size_label = QLabel(setup_box)
        self.size_label.setWordWrap(True)
        self.cache_label = QLabel(cache_text(), setup_box)
        self.cache_label.setWordWrap(True)
        sl = QVBoxLayout(setup_box)
        sl.addWidget(self.size_label)
        sl.addWidget(self.cache_label)
        sl.addWidget(self.gpu_label)
        sl.addLayout(hbox(QLabel("torch from:", setup_box), (self.source_combo, 1)))
        sl.addWidget(self.folder_row)
        sl.addLayout(hbox((self.variant_combo, 1), self.setup_button, self.cancel_button))

        use_box = QGroupBox("Or use an existing Python interpreter", self)
        self.python_edit = QLineEdit(str(QgsSettings().value(SETTINGS_KEY, "") or ""), use_box)
        self.python_edit.setPlaceholderText("path to python / python.exe of an environment with the engine's packages")
        browse = QPushButton("Browse…", use_box)
        self.use_button = QPushButton("Check and use", use_box)
        ul = QHBoxLayout(use_box)
        ul.addWidget(self.python_edit, 1)
        ul.addWidget(browse)
        ul.addWidget(self.use_button)

        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)  # only while a set-up or a check runs
        self.log_view = QPlainTextEdit(self)
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.log_view.setMinimumHeight(180)
        self.log_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        self.check_button = buttons.addButton("Check engine", QDialogButtonBox.ButtonRole.ActionRole)

        lay = QVBoxLayout(self)
        for w in (intro, self.current_label, setup_box, use_box, self.progress, self.log_view, buttons):
            lay.addWidget(w)
        buttons.rejected.connect(self.reject)
        self.check_button.setAutoDefault(False)
        close = buttons.button(QDialogButtonBox.StandardButton.Close)
        close.setDefault(True)
        close.setFocus()
        self.variant_combo.currentIndexChanged.connect(self._show_size)
        self.source_combo.currentIndexChanged.connect(self._show_size)
        self.folder_edit.textChanged.connect(self._show_size)
        self.folder_browse.clicked.connect(self._browse_folder)
        if self.setup_options.get("find_links"):  # a caller's wheel folder is the folder route
            self.source_combo.setCurrentIndex(self.source_combo.findData("folder"))
            self.folder_edit.setText(str(self.setup_options["find_links"]))
        self._show_size()
        self.check_button.clicked.connect(lambda: self.check(engine_python()))
        self.setup_button.clicked.connect(self.start_setup)
        self.cancel_button.clicked.connect(self.cancel_setup)
        browse.clicked.connect(self._browse)
        self.use_button.clicked.connect(lambda: self.check(self.python_edit.text().strip(), save=True))
        self._show_current()

    def _show_size(self, *_a) -> None:
        """What the chosen route downloads and installs (measured; engine_commands.DOWNLOAD_MB / INSTALLED_MB)."""
        variant, source = self.variant_combo.currentData(), self.source_combo.currentData()
        self.folder_row.setVisible(source == "folder")
        self.setup_button.setEnabled(self.task is None and (source != "folder" or bool(self.folder_edit.text().strip())))
        self.size_label.setText(setup_size_text(source, variant, self.env_dir))

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of wheels for the engine", self.folder_edit.text())
        if path:
            self.folder_edit.setText(path)

    def setup_choice(self) -> tuple[str, dict]:
        """(variant, set-up options) as chosen in the dialog (the caller's options first)."""
        options = dict(self.setup_options)
        source = self.source_combo.currentData()
        options["torch_source"] = source
        if source == "folder":
            options["find_links"] = self.folder_edit.text().strip()
        else:
            options.pop("find_links", None)
        return self.variant_combo.currentData(), options

    def _show_current(self) -> None:
        python = engine_python()
        problem = quick_engine_problem(python)
        self.current_label.setText(f"Engine Python now: {python}" + (f"\n{problem}" if problem else ""))

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Python interpreter of the engine", self.python_edit.text())
        if path:
            self.python_edit.setText(path)

    def append_log(self, line: str) -> None:
        self.log_view.appendPlainText(line)

    def start_setup(self) -> EngineSetupTask:
        """Queue the set-up task with the chosen torch build; returns it (tests wait on it)."""
        variant, options = self.setup_choice()
        self.task = EngineSetupTask(self.env_dir, variant, options)
        self.task.log_line.connect(self.append_log)
        self.task.progressChanged.connect(lambda p: self.progress.setValue(int(p)))
        self.task.setup_finished.connect(self._on_setup_finished)
        self.setup_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.append_log(f"Setting up the engine ({variant.upper()} build) in {self.env_dir}; "
                        "this can take several minutes and continues if you close this window.")
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel_setup(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _on_setup_finished(self, result: dict) -> None:
        self.progress.setVisible(False)
        self.cancel_button.setEnabled(False)
        self.task = None
        self._show_size()  # re-enables Set up engine (unless the folder route lacks its folder)
        if result.get("canceled"):
            self.append_log("Set-up canceled; run it again to resume (finished downloads are reused).")
        elif "error" in result:
            self.append_log(f"Set-up failed: {result['error']}")
        else:
            self.progress.setValue(100)
            self.append_log(result.get("summary", ""))
            if result.get("ok"):
                self.python_edit.setText(result["python"])
        self._show_current()
        self.engine_changed.emit(result)

    def check(self, python: str, save: bool = False) -> EngineCheckTask:
        """Check `python` in a task; with `save`, a passing interpreter becomes the engine Python."""
        self.append_log(f"Checking {python or '(no interpreter)'} …")
        self.check_button.setEnabled(False)
        self.check_task = EngineCheckTask(python)
        if self.task is None:  # a busy bar while the check imports the engine's packages
            self.progress.setRange(0, 0)
            self.progress.setVisible(True)

        def done(result: dict) -> None:
            self.check_button.setEnabled(True)
            if self.task is None:
                self.progress.setRange(0, 100)
                self.progress.setVisible(False)
            self.check_task = None
            self.append_log(result.get("summary") or f"Check failed: {result.get('error')}")
            if save and result.get("ok"):
                QgsSettings().setValue(SETTINGS_KEY, result["python"])
                self.append_log(f"The engine now runs with {result['python']}.")
            self._show_current()
            self.engine_changed.emit(result)

        self.check_task.check_finished.connect(done)
        QgsApplication.taskManager().addTask(self.check_task)
        return self.check_task


def _mb(mb: float) -> str:
    return f"{mb / 1000:.1f} GB" if mb >= 1000 else f"{mb:.0f} MB"


def setup_size_text(source: str, variant: str, env_dir: str, platform: str = sys.platform) -> str:
    """The dialog's line on what a set-up downloads and writes, from measured sizes (see RESULTS.md)."""
    torch_mb = engine_commands.torch_download_mb(source, variant, platform)
    rest = engine_commands.LOCK_DOWNLOAD_MB[""]
    installed = engine_commands.installed_mb(source, variant, platform)
    where = f"into {env_dir} (your QGIS profile; no admin rights)"
    if source == "folder":
        what = "Installs from the wheel folder, downloads nothing"
    elif torch_mb is None:
        what = "Downloads torch and the engine's packages with pip"
    else:
        what = f"Downloads about {_mb(torch_mb + rest)} with pip (torch {_mb(torch_mb)}, the rest {_mb(rest)})"
    disk = f"; about {_mb(installed)} on disk" if installed else "; the size on disk of this build was not measured"
    return f"{what} {where}{disk}."


def cache_text() -> str:
    """The dialog's line on the one cache the engine writes outside the profile."""
    return (f"The first index also writes a {_mb(engine_commands.ONNX_CACHE_MB)} ONNX copy of the text embedder to "
            f"{engine_commands.onnx_cache_root()} (set SIS_ONNX_CACHE to move it).")


class EngineBanner(QWidget):
    """One short line at the top of the dock that tracks the engine: what is wrong (details in the
    tooltip) with the fix at hand, or a green "ready" for a few seconds after a passing check."""

    def __init__(self, open_setup: Callable[[], None], parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("SemanticImagerySearchEngineBanner")
        self.label = QLabel(self)
        self.label.setWordWrap(False)
        self.button = QPushButton("Set up engine…", self)
        self.button.clicked.connect(open_setup)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.label, 1)
        lay.addWidget(self.button)
        self.problem: Optional[str] = None
        self._hide_timer = QTimer(self)
        self._hide_timer.setSingleShot(True)
        self._hide_timer.timeout.connect(self.hide)
        self.hide()

    def set_problem(self, problem: Optional[str]) -> None:
        """None: nothing wrong (hidden); a problem: one short line, the full text in the tooltip."""
        self.problem = problem
        self._hide_timer.stop()
        if problem:
            self.label.setText(f"⚠ {short_problem(problem)} — searching is off")
            self.label.setStyleSheet("color: #8a4b00; font-weight: bold;")
            self.label.setToolTip(f"{problem}\nFix: {FIX_HINT}")
            self.button.show()
            self.show()
        else:
            self.label.clear()
            self.label.setToolTip("")
            self.hide()

    def set_ready(self, summary: str = "") -> None:
        self.problem = None
        self.label.setText("● engine ready")
        self.label.setStyleSheet("color: #2e7d32; font-weight: bold;")
        self.label.setToolTip(summary)
        self.button.hide()
        self.show()
        self._hide_timer.start(8000)

    def set_check(self, result: dict) -> None:
        """Show a finished check: its first problem, its error, or a green "ready"."""
        if result.get("ok"):
            self.set_ready(str(result.get("summary") or ""))
        elif result.get("setup_failed"):  # never "Installing torch", as if it were still installing
            self.set_problem(f"Engine set-up failed: {result.get('error')}")
        elif result.get("error"):
            self.set_problem(result["error"].rstrip(".") + ".")
        elif result.get("problems"):
            self.set_problem(result["problems"][0].rstrip(".") + ".")


def short_problem(problem: str) -> str:
    """"The search engine is not set up (no Python at /a/b)." -> "Search engine not set up"."""
    text = problem.strip()
    low = text.lower()
    if "not set up" in low or "no engine environment" in low or "no python at" in low:
        return "Search engine not set up"
    if low.startswith("engine set-up failed"):
        return "Engine set-up failed"
    if "lacks" in low or "not finished" in low:
        return "Engine set-up not finished"
    if "worker" in low or "died" in low or "crash" in low or "killed" in low:
        return "Search engine stopped"
    first = text.split(" (")[0].split(": ")[0].rstrip(".")
    return first[:60] + ("…" if len(first) > 60 else "")
