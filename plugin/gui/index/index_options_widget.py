"""The captioner / embedder / tiling / device form of the index panel.

Kept apart from the layer list so each class stays small; it reads and writes `IndexOptions`
and never resolves the API key itself (only the auth config id is kept).
"""

from __future__ import annotations

from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QWidget,
)

from ..layouts import hbox
from ..settings.settings import CAPTIONER_KINDS, DEVICES, DOCUMENT_GRAPHS, IndexOptions

_KIND_LABELS = {
    "spectral": "Spectral (offline, fast)",
    "transformers": "Transformers vision-language model",
    "openai": "OpenAI-compatible server",
}


class IndexOptionsWidget(QWidget):
    def __init__(self, options: IndexOptions, parent=None) -> None:
        super().__init__(parent)
        self.kind_combo = QComboBox(self)
        for kind in CAPTIONER_KINDS:
            self.kind_combo.addItem(_KIND_LABELS[kind], kind)

        # One page per captioner kind: only the fields that kind needs are visible.
        self.pages = QStackedWidget(self)
        self.pages.addWidget(QWidget(self))
        self.model_edit = QLineEdit(self)
        self.model_edit.setPlaceholderText("hub id or local folder, e.g. HuggingFaceTB/SmolVLM-256M-Instruct")
        page_tf = QWidget(self)
        f_tf = QFormLayout(page_tf)
        f_tf.setContentsMargins(0, 0, 0, 0)
        f_tf.addRow("Model", self.model_edit)
        self.pages.addWidget(page_tf)
        self.url_edit = QLineEdit(self)
        self.url_edit.setPlaceholderText("http://localhost:11434/v1")
        self.server_model_edit = QLineEdit(self)
        self.server_model_edit.setPlaceholderText("e.g. qwen2.5vl:3b")
        self.auth_select = _make_auth_select(self)
        page_oa = QWidget(self)
        f_oa = QFormLayout(page_oa)
        f_oa.setContentsMargins(0, 0, 0, 0)
        f_oa.addRow("Server URL", self.url_edit)
        f_oa.addRow("Model", self.server_model_edit)
        f_oa.addRow("API key", self.auth_select)
        self.connect_spin, self.deadline_spin = _server_time_spins(self)
        f_oa.addRow("Connect timeout", hbox(self.connect_spin, QLabel("tile deadline", self), self.deadline_spin))
        self.pages.addWidget(page_oa)

        self.variants_spin = QSpinBox(self)
        self.variants_spin.setRange(1, 10)
        self.batch_spin = QSpinBox(self)
        self.batch_spin.setRange(0, 1024)
        self.batch_spin.setSpecialValueText("default")
        self.batch_spin.setToolTip("Tiles per captioner call (smaller = less GPU memory, more frequent commits)")
        self.embedder_edit = QLineEdit(self)
        self.embedder_edit.setPlaceholderText("packaged MiniLM (all-MiniLM-L6-v2)")
        self.tile_spin = QSpinBox(self)
        self.tile_spin.setRange(32, 8192)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setSuffix(" px")
        self.overlap_spin = QDoubleSpinBox(self)
        self.overlap_spin.setRange(0.0, 0.75)
        self.overlap_spin.setSingleStep(0.05)
        self.scales_edit = QLineEdit(self)
        self.scales_edit.setToolTip("Extra scales as integer factors, e.g. 1,2 adds tiles twice as large")
        self.device_combo = QComboBox(self)
        self.device_combo.addItems(list(DEVICES))
        self.graph_combo = QComboBox(self)
        self.graph_combo.addItems(list(DOCUMENT_GRAPHS))
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Captioner", self.kind_combo)
        form.addRow(self.pages)
        form.addRow("Caption variants", hbox(self.variants_spin, QLabel("batch", self), self.batch_spin))
        form.addRow("Embedder", self.embedder_edit)
        form.addRow("Tile / overlap / scales", hbox(self.tile_spin, self.overlap_spin, self.scales_edit))
        # filled by gui/index/tiling_hint.py from the checked layers: tile count, ground size per scale, time
        self.estimate_label = QLabel("", self)
        self.estimate_label.setWordWrap(True)
        self.estimate_label.setStyleSheet("color: #444;")
        self.suggest_button = QPushButton("Suggest", self)
        self.suggest_button.setToolTip("Tile size and scales from the checked rasters' ground resolution and the captioner")
        form.addRow("Estimate", hbox((self.estimate_label, 1), self.suggest_button))
        form.addRow("Device", hbox(self.device_combo, QLabel("caption embedding", self), self.graph_combo))
        self.kind_combo.setToolTip("What writes the captions: the offline spectral describer, a local vision-language "
                                   "model (transformers) or an OpenAI-compatible server")
        self.variants_spin.setToolTip("Captions written per tile (the paper uses 5); a tile scores by its best variant")
        self.embedder_edit.setToolTip("sentence-transformers model that embeds captions and queries; empty = the packaged MiniLM")
        self.tile_spin.setToolTip("Tile size in raster pixels at scale 1. Aim at 0.1-1 km of ground per tile; "
                                  "a VLM sees about 336-448 px, larger tiles are downsampled")
        self.overlap_spin.setToolTip("Fraction of a tile shared with its neighbour (0 = none; 0.25 = a quarter)")
        self.scales_edit.setToolTip("Tile sizes as multiples of the tile size, e.g. 1,2 also indexes tiles twice as "
                                    "large (wider context); each scale adds tiles")
        self.device_combo.setToolTip("Where the models run: auto = CUDA, then Apple MPS, then CPU")
        self.graph_combo.setToolTip("How a NEW index embeds its captions: auto = int8 on a CPU (~1.6x as fast, "
                                    "cosine 0.99 to fp32), fp32 on a GPU. An existing index keeps the one it was built with")
        self.kind_combo.currentIndexChanged.connect(self._on_kind_changed)
        self.set_options(options)

    def set_options(self, o: IndexOptions) -> None:
        i = self.kind_combo.findData(o.captioner_kind)
        self.kind_combo.setCurrentIndex(max(0, i))
        self.model_edit.setText(o.transformers_model)
        self.url_edit.setText(o.server_url)
        self.server_model_edit.setText(o.server_model)
        _set_authcfg(self.auth_select, o.authcfg)
        self.connect_spin.setValue(float(o.connect_timeout_s))
        self.deadline_spin.setValue(float(o.tile_deadline_s))
        self.variants_spin.setValue(int(o.variants))
        self.batch_spin.setValue(int(o.batch_size))
        self.embedder_edit.setText(o.embedder)
        self.tile_spin.setValue(int(o.tile_size))
        self.overlap_spin.setValue(float(o.overlap))
        self.scales_edit.setText(o.scales)
        d = self.device_combo.findText(o.device)
        self.device_combo.setCurrentIndex(max(0, d))
        self.graph_combo.setCurrentIndex(max(0, self.graph_combo.findText(o.document_graph)))
        self._on_kind_changed()

    def options(self) -> IndexOptions:
        return IndexOptions(
            captioner_kind=str(self.kind_combo.currentData()),
            transformers_model=self.model_edit.text().strip(),
            server_url=self.url_edit.text().strip(),
            server_model=self.server_model_edit.text().strip(),
            authcfg=_get_authcfg(self.auth_select),
            connect_timeout_s=self.connect_spin.value(),
            tile_deadline_s=self.deadline_spin.value(),
            variants=self.variants_spin.value(),
            batch_size=self.batch_spin.value(),
            embedder=self.embedder_edit.text().strip(),
            tile_size=self.tile_spin.value(),
            overlap=round(self.overlap_spin.value(), 3),
            scales=self.scales_edit.text().strip() or "1",
            device=self.device_combo.currentText(),
            document_graph=self.graph_combo.currentText(),
        )

    def _on_kind_changed(self, *_a) -> None:
        kind = self.kind_combo.currentData()
        self.pages.setCurrentIndex(max(0, CAPTIONER_KINDS.index(kind)) if kind in CAPTIONER_KINDS else 0)
        # the spectral captioner has no settings: no empty block in the form
        self.pages.setVisible(kind in ("transformers", "openai"))
        self.variants_spin.setEnabled(kind != "spectral")


def _server_time_spins(parent: QWidget) -> tuple[QDoubleSpinBox, QDoubleSpinBox]:
    """Connect timeout and per-tile deadline of an OpenAI-compatible server, in seconds."""
    connect = QDoubleSpinBox(parent)
    connect.setRange(0.5, 120.0)
    connect.setSuffix(" s")
    connect.setToolTip("Seconds to wait for a connection: a server that is down fails the job this fast")
    deadline = QDoubleSpinBox(parent)
    deadline.setRange(1.0, 3600.0)
    deadline.setDecimals(0)
    deadline.setSuffix(" s")
    deadline.setToolTip("Seconds one tile may take, retries included (raise it for a slow CPU server)")
    return connect, deadline


def _make_auth_select(parent: QWidget) -> QWidget:
    """QgsAuthConfigSelect lets the user pick or create an encrypted config; a plain id box if unavailable."""
    try:
        from qgis.gui import QgsAuthConfigSelect

        return QgsAuthConfigSelect(parent)
    except Exception:  # pragma: no cover -- builds without the auth GUI
        w = QLineEdit(parent)
        w.setPlaceholderText("QGIS authentication config id")
        return w


def _set_authcfg(widget: QWidget, authcfg: str) -> None:
    if isinstance(widget, QLineEdit):
        widget.setText(authcfg or "")
    else:
        widget.setConfigId(authcfg or "")


def _get_authcfg(widget: QWidget) -> str:
    if isinstance(widget, QLineEdit):
        return widget.text().strip()
    return str(widget.configId() or "")
