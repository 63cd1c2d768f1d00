"""The "Run indexing on" group of the settings: this computer / a Ray cluster / a Ray job, the path
map, max caption workers, the Ray token (into QgsAuthManager) and "Test cluster".

"Test cluster" runs in a task with a worker of its own (Ray never enters QGIS's Python); the dialog
never waits for it, and its answer or its error is one line under the button.
"""

from __future__ import annotations

from typing import Any, Optional

from qgis.core import QgsApplication
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
)

from ..layouts import STRETCH, hbox, vbox
from .cluster_settings import RUN_ON, RUN_ON_LABELS, ClusterOptions, store_ray_token


class ClusterWidget(QGroupBox):
    def __init__(self, options: ClusterOptions, parent=None) -> None:
        super().__init__("Run indexing on", parent)
        self._authcfg = options.authcfg
        self.task: Any = None
        self.run_on = QComboBox(self)
        for kind in RUN_ON:
            self.run_on.addItem(RUN_ON_LABELS[kind], kind)
        self.address_edit = QLineEdit(self)
        self.address_edit.setPlaceholderText("head:6379 (or 'local': a private Ray on this computer)")
        self.dashboard_edit = QLineEdit(self)
        self.dashboard_edit.setPlaceholderText("http://head:8265")
        self.shared_edit = QLineEdit(self)
        self.shared_edit.setPlaceholderText("a folder this computer and the cluster both mount (result shards go there)")
        self.workers_spin = QSpinBox(self)
        self.workers_spin.setRange(0, 4096)
        self.workers_spin.setSpecialValueText("one per GPU")
        self.workers_spin.setToolTip("Most caption workers (model copies) on the cluster")
        self.token_edit = QLineEdit(self)
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.forget_button = QToolButton(self)
        self.forget_button.setText("Forget")
        self.forget_button.setToolTip("Use no token (the stored one stays in the QGIS authentication database)")
        self.forget_button.clicked.connect(self._forget_token)
        self.map_table = QTableWidget(0, 2, self)
        self.map_table.setHorizontalHeaderLabels(["Local prefix", "Cluster path or URI"])
        self.map_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.map_table.verticalHeader().setVisible(False)
        self.map_table.setMinimumHeight(90)
        self.map_table.setToolTip("Rasters under a local prefix are read on the cluster under its cluster path; "
                                  "the index keeps the local path")
        add, remove = QToolButton(self), QToolButton(self)
        add.setText("+")
        remove.setText("−")
        add.clicked.connect(lambda: self.add_mapping("", ""))
        remove.clicked.connect(self._remove_mapping)
        self.test_button = QPushButton("Test cluster", self)
        self.test_button.clicked.connect(self.test_cluster)
        self.result_label = QLabel("", self)
        self.result_label.setWordWrap(True)

        self.form = form = QFormLayout(self)
        form.addRow("Run on", self.run_on)
        form.addRow("Address", self.address_edit)
        form.addRow("Dashboard URL", self.dashboard_edit)
        form.addRow("Shared folder", self.shared_edit)
        form.addRow("Path map", hbox((self.map_table, 1), vbox(add, remove, STRETCH)))
        form.addRow("Max caption workers", self.workers_spin)
        form.addRow("Ray token", hbox((self.token_edit, 1), self.forget_button))
        form.addRow(hbox(self.test_button, (self.result_label, 1)))
        self.run_on.currentIndexChanged.connect(self._on_kind)
        self.set_options(options)

    # -- values ------------------------------------------------------------------------------------
    def set_options(self, o: ClusterOptions) -> None:
        self.run_on.setCurrentIndex(max(0, self.run_on.findData(o.run_on)))
        self.address_edit.setText(o.address)
        self.dashboard_edit.setText(o.dashboard_url)
        self.shared_edit.setText(o.shared_dir)
        self.workers_spin.setValue(int(o.caption_workers))
        self._authcfg = o.authcfg
        self.map_table.setRowCount(0)
        for line in o.path_map.splitlines():
            local, _, remote = line.partition("=")
            if line.strip():
                self.add_mapping(local.strip(), remote.strip())
        self._on_kind()

    def options(self) -> ClusterOptions:
        """What the form shows; a token typed in is stored in QgsAuthManager first (RuntimeError if locked)."""
        token = self.token_edit.text().strip()
        if token:
            self._authcfg = store_ray_token(token, self._authcfg)
            self.token_edit.clear()
            self._show_token_state()
        return ClusterOptions(run_on=str(self.run_on.currentData()), address=self.address_edit.text().strip(),
                              dashboard_url=self.dashboard_edit.text().strip(), shared_dir=self.shared_edit.text().strip(),
                              path_map="\n".join(f"{a}={b}" for a, b in self.mappings()),
                              caption_workers=self.workers_spin.value(), authcfg=self._authcfg)

    def mappings(self) -> list[tuple[str, str]]:
        out = []
        for r in range(self.map_table.rowCount()):
            cells = [self.map_table.item(r, c) for c in (0, 1)]
            a, b = ((c.text().strip() if c is not None else "") for c in cells)
            if a or b:
                out.append((a, b))
        return out

    def add_mapping(self, local: str, remote: str) -> None:
        r = self.map_table.rowCount()
        self.map_table.insertRow(r)
        self.map_table.setItem(r, 0, QTableWidgetItem(local))
        self.map_table.setItem(r, 1, QTableWidgetItem(remote))

    def _remove_mapping(self) -> None:
        r = self.map_table.currentRow()
        self.map_table.removeRow(r if r >= 0 else self.map_table.rowCount() - 1)

    def _forget_token(self) -> None:
        self._authcfg = ""
        self.token_edit.clear()
        self._show_token_state()

    def _show_token_state(self) -> None:
        self.token_edit.setPlaceholderText("a token is stored encrypted (type to replace it)" if self._authcfg
                                           else "optional: stored encrypted in the QGIS authentication database")
        self.forget_button.setEnabled(bool(self._authcfg))

    def _on_kind(self, *_a: Any) -> None:
        kind = self.run_on.currentData()
        for w, shown in ((self.address_edit, kind == "ray"), (self.dashboard_edit, kind == "ray-job"),
                         (self.shared_edit, kind == "ray-job")):
            w.setVisible(shown)
            label = self.form.labelForField(w)
            if label is not None:
                label.setVisible(shown)
        for w in (self.map_table, self.workers_spin, self.token_edit, self.forget_button):
            w.setEnabled(kind != "local")
        self.test_button.setEnabled(kind != "local" and self.task is None)
        self._show_token_state()

    # -- Test cluster ------------------------------------------------------------------------------
    def test_cluster(self) -> bool:
        """Start the check in a task; False (and a one-line message) when it cannot start."""
        from ...qgis_io.engine import engine_python
        from ...tasks.cluster_probe_task import ClusterProbeTask

        if self.task is not None:
            return False
        try:
            opts = self.options()
            args = opts.executor_args()
            env = opts.worker_env()
        except (ValueError, RuntimeError) as exc:
            self.show_result(f"✖ {exc}", ok=False)
            return False
        if not args:
            return False
        eo = args["executor_options"]
        probe = {"executor": args["executor"], "address": eo.get("address", "local"),
                 "dashboard_url": eo.get("dashboard_url", "")}
        if probe["executor"] == "ray" and probe["address"] == "local":
            self.show_result("a private Ray on this computer: nothing to test", ok=True)
            return False
        self.task = ClusterProbeTask(engine_python(), probe, env)
        self.task.probed.connect(self._on_probed)
        self.test_button.setEnabled(False)
        self.show_result("Testing… (starting the engine and asking the cluster)", ok=True)
        QgsApplication.taskManager().addTask(self.task)
        return True

    def _on_probed(self, result: dict, error: str) -> None:
        from ...tasks.cluster_probe_task import summary

        self.task = None
        self._on_kind()
        if error:
            self.show_result(f"✖ {error}", ok=False)
        else:
            self.show_result(("" if result.get("mismatch") else "✔ ") + summary(result), ok=not result.get("mismatch"))

    def show_result(self, text: str, ok: bool) -> None:
        self.result_label.setText(text.splitlines()[0] if text else "")
        self.result_label.setStyleSheet("" if ok else "color: #b00020;")

    def close_task(self) -> Optional[Any]:
        task, self.task = self.task, None
        if task is not None:
            try:
                task.probed.disconnect(self._on_probed)
                task.cancel()
            except (TypeError, RuntimeError):
                pass
        return task
