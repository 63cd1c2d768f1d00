"""Settings: storing a captioner server's API key safely (the engine's Python is chosen in the
"Set up engine" dialog, one place for everything about the engine).

The key typed here goes straight into the QGIS authentication database; only the returned config
id is kept (in QgsSettings, via the index panel's auth selector).
"""

from __future__ import annotations

from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QMessageBox

from .settings import store_api_key


class SettingsDialog(QDialog):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Semantic Imagery Search settings")
        self.key_edit = QLineEdit(self)
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setPlaceholderText("optional: stored encrypted in the QGIS authentication database")
        self.authcfg = ""
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Server API key", self.key_edit)
        form.addRow(QLabel("The engine's Python is chosen in Plugins › Semantic Imagery Search › Set up engine…", self))
        form.addRow(buttons)

    def accept(self) -> None:
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
