"""Settings: a captioner server's API key and where indexing runs (this computer or a Ray cluster).

Secrets typed here (the server's API key, the Ray token) go straight into the QGIS authentication
database; only the returned config ids are kept (in QgsSettings). The engine's Python is chosen in
the "Set up engine" dialog, one place for everything about the engine.
"""

from __future__ import annotations

from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QVBoxLayout,
)

from .cluster_settings import load_cluster_options, save_cluster_options
from .cluster_widget import ClusterWidget
from .settings import store_api_key


class SettingsDialog(QDialog):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Semantic Imagery Search settings")
        self.key_edit = QLineEdit(self)
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setPlaceholderText("optional: stored encrypted in the QGIS authentication database")
        self.authcfg = ""
        self.cluster = ClusterWidget(load_cluster_options(), self)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow("Server API key", self.key_edit)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.cluster)
        layout.addWidget(QLabel("The engine's Python is chosen in Plugins › Semantic Imagery Search › Set up engine…", self))
        layout.addWidget(buttons)
        self.resize(640, self.sizeHint().height())

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
        try:
            save_cluster_options(self.cluster.options())  # a typed token goes to the auth database first
        except RuntimeError as exc:
            QMessageBox.warning(self, "Ray token not stored", str(exc))
            return
        self.cluster.close_task()
        super().accept()

    def reject(self) -> None:
        self.cluster.close_task()
        super().reject()
