"""Engine settings: which Python runs the engine worker, and storing a server API key safely.

The key typed here goes straight into the QGIS authentication database; only the returned config
id is kept (in QgsSettings, via the index panel's auth selector).
"""

from __future__ import annotations

from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QMessageBox

from .settings import engine_python_setting, set_engine_python_setting, store_api_key


class SettingsDialog(QDialog):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Semantic Imagery Search settings")
        self.python_edit = QLineEdit(engine_python_setting(), self)
        self.python_edit.setPlaceholderText("default: the plugin's .venv, else python3 on PATH")
        self.key_edit = QLineEdit(self)
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setPlaceholderText("optional: stored encrypted in the QGIS authentication database")
        self.authcfg = ""
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Engine Python", self.python_edit)
        form.addRow("Server API key", self.key_edit)
        form.addRow(QLabel("Changing the engine Python takes effect at the next search or job.", self))
        form.addRow(buttons)

    def accept(self) -> None:
        set_engine_python_setting(self.python_edit.text().strip())
        key = self.key_edit.text().strip()
        if key:
            try:
                self.authcfg = store_api_key(key)
            except RuntimeError as exc:
                QMessageBox.warning(self, "API key not stored", str(exc))
                return
            finally:
                self.key_edit.clear()
        super().accept()
