"""Defaults and last-used values of the dock, kept in QgsSettings; API keys in QgsAuthManager.

Why a dedicated module: every panel reads and writes the same keys, and the API key of an
OpenAI-compatible server must never reach QgsSettings or the project file -- only the id of a
QgsAuthManager configuration is stored, and the key itself is looked up right before a job starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from qgis.core import QgsApplication, QgsAuthMethodConfig, QgsSettings

PREFIX = "semantic_imagery_search"

CAPTIONER_KINDS = ("spectral", "transformers", "openai")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: The caption embedding of a NEW index (engine: indexing/document_graph.py); an existing index keeps its own.
DOCUMENT_GRAPHS = ("auto", "fp32", "int8")


@dataclass
class IndexOptions:
    """What the index panel edits; turned into the engine's `index_rasters` keywords by `to_engine`."""

    captioner_kind: str = "spectral"
    transformers_model: str = ""
    server_url: str = "http://localhost:11434/v1"
    server_model: str = ""
    authcfg: str = ""
    connect_timeout_s: float = 5.0  # openai server: seconds to connect
    tile_deadline_s: float = 120.0  # openai server: seconds per tile, retries included
    variants: int = 5
    batch_size: int = 0  # tiles per captioner call; 0 = the captioner's default
    embedder: str = ""
    tile_size: int = 512
    overlap: float = 0.0
    scales: str = "1"
    device: str = "auto"
    document_graph: str = "auto"

    def captioner_spec(self) -> str:
        """The engine's captioner spec ("spectral", "transformers:<model>", "openai:<url>#<model>")."""
        kind = self.captioner_kind if self.captioner_kind in CAPTIONER_KINDS else "spectral"
        if kind == "transformers":
            if not self.transformers_model.strip():
                raise ValueError("choose a transformers model id or folder for the captioner")
            return f"transformers:{self.transformers_model.strip()}"
        if kind == "openai":
            if not self.server_url.strip() or not self.server_model.strip():
                raise ValueError("the OpenAI-compatible captioner needs a server URL and a model name")
            return f"openai:{self.server_url.strip()}#{self.server_model.strip()}"
        return "spectral"

    def scale_tuple(self) -> tuple[int, ...]:
        """Parse "1, 2" into (1, 2); a clear ValueError for anything else."""
        try:
            out = tuple(sorted({int(s) for s in str(self.scales).replace(";", ",").split(",") if s.strip()}))
        except ValueError:
            raise ValueError(f"scales {self.scales!r}: expected integers like 1,2,4") from None
        if not out or any(s < 1 for s in out):
            raise ValueError(f"scales {self.scales!r}: expected integers >= 1 like 1,2,4")
        return out

    def to_engine(self) -> dict[str, Any]:
        """Keywords for the indexing job; the API key is resolved here, on the main thread, never stored."""
        if not 32 <= int(self.tile_size) <= 8192:
            raise ValueError(f"tile size {self.tile_size}: expected 32 to 8192 pixels")
        if not 0.0 <= float(self.overlap) < 0.9:
            raise ValueError(f"overlap {self.overlap}: expected a fraction from 0 to 0.9")
        spec = self.captioner_spec()
        captioner_options: dict[str, Any] = {}
        if spec != "spectral":
            captioner_options["variants"] = int(self.variants)
        if int(self.batch_size) > 0:
            captioner_options["batch_size"] = int(self.batch_size)
        if spec.startswith("openai:"):
            captioner_options["connect_timeout_s"] = max(0.5, float(self.connect_timeout_s))
            captioner_options["tile_deadline_s"] = max(1.0, float(self.tile_deadline_s))
        if spec.startswith("openai:") and self.authcfg:
            key = api_key_from_auth(self.authcfg)
            if key:
                captioner_options["api_key"] = key
        return {
            "captioner": spec,
            "embedder": self.embedder.strip() or None,
            "tiling": {"tile_size": int(self.tile_size), "overlap": float(self.overlap), "scales": list(self.scale_tuple())},
            "captioner_options": captioner_options,
            "device": self.device if self.device in DEVICES else "auto",
            "document_graph": self.document_graph if self.document_graph in DOCUMENT_GRAPHS else "auto",
        }

    def described(self) -> str:
        """Short text for the status line (never shows a key)."""
        try:
            spec = self.captioner_spec()
        except ValueError:
            spec = self.captioner_kind
        return f"{spec} / {self.embedder.strip() or 'MiniLM (packaged)'}"


@dataclass
class SearchOptions:
    top: int = 10
    only_extent: bool = False
    fusion: str = "max"


def _key(name: str) -> str:
    return f"{PREFIX}/{name}"


def load_group(cls: type, group: str) -> Any:
    s = QgsSettings()
    obj = cls()
    for f in fields(cls):
        default = getattr(obj, f.name)
        raw = s.value(_key(f"{group}/{f.name}"), default)
        try:
            if isinstance(default, bool):
                val: Any = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                val = int(raw)
            elif isinstance(default, float):
                val = float(raw)
            else:
                val = "" if raw is None else str(raw)
        except (TypeError, ValueError):
            val = default
        setattr(obj, f.name, val)
    return obj


def save_group(obj: Any, group: str) -> None:
    s = QgsSettings()
    for name, value in asdict(obj).items():
        s.setValue(_key(f"{group}/{name}"), value)


def load_index_options() -> IndexOptions:
    return load_group(IndexOptions, "index")


def save_index_options(opts: IndexOptions) -> None:
    save_group(opts, "index")


def tiling_saved() -> bool:
    """Whether the user ever indexed with a tile size of their own (else the dock suggests one)."""
    return QgsSettings().contains(_key("index/tile_size"))


def load_search_options() -> SearchOptions:
    return load_group(SearchOptions, "search")


def save_search_options(opts: SearchOptions) -> None:
    save_group(opts, "search")


def engine_python_setting() -> str:
    return str(QgsSettings().value(_key("engine_python"), "") or "")


def set_engine_python_setting(path: str) -> None:
    QgsSettings().setValue(_key("engine_python"), path or "")


# ---- API keys through QgsAuthManager -------------------------------------------------------------


def store_api_key(key: str, name: str = "Semantic Imagery Search server", authcfg: str = "") -> str:
    """Store `key` encrypted in the QGIS authentication database and return the config id.

    The Basic method is used because it exists in every QGIS 3 build; the key is its password.
    Raises RuntimeError when the database is locked (no master password) so the caller can say so.
    """
    am = QgsApplication.authManager()
    if am.isDisabled():
        raise RuntimeError("the QGIS authentication system is disabled; cannot store an API key")
    if not am.setMasterPassword(True):
        raise RuntimeError("the QGIS authentication database is locked (master password not set)")
    cfg = QgsAuthMethodConfig()
    cfg.setMethod("Basic")
    cfg.setName(name)
    cfg.setConfig("username", "api-key")
    cfg.setConfig("password", key)
    if authcfg:
        cfg.setId(authcfg)
        ok = am.updateAuthenticationConfig(cfg)
    else:
        res = am.storeAuthenticationConfig(cfg)
        ok, cfg = (res if isinstance(res, tuple) else (res, cfg))
    if not ok or not cfg.id():
        raise RuntimeError("could not store the API key in the QGIS authentication database")
    return str(cfg.id())


def api_key_from_auth(authcfg: str) -> Optional[str]:
    """The key stored under `authcfg`, or None when the config is missing or locked."""
    if not authcfg:
        return None
    am = QgsApplication.authManager()
    cfg = QgsAuthMethodConfig()
    res = am.loadAuthenticationConfig(authcfg, cfg, True)
    ok, cfg = (res if isinstance(res, tuple) else (res, cfg))
    if not ok:
        return None
    return cfg.config("password") or cfg.config("token") or None
