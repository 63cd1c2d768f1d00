"""Path mapping between this computer and a cluster: `[(local_prefix, cluster_prefix), ...]`.

A raster the user opened as `D:\\ortho\\a.tif` or `/mnt/nas/ortho/a.tif` is read on the cluster as
`s3://bucket/ortho/a.tif` or `/shared/ortho/a.tif`. Only the paths sent to the cluster are mapped:
raster ids are content-based and the index stores the local path, so an index built on a cluster
is searched and updated locally as if it had been built here. The longest matching prefix wins;
a prefix matches whole path components only (`/data` maps `/data/a.tif`, never `/database/a.tif`).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from ..errors import EngineError

PathMap = list[tuple[str, str]]


def _trim(prefix: str) -> str:
    p = prefix.strip()
    return p if p in ("/", "\\") or p.endswith("://") else p.rstrip("/\\")


def parse_path_map(raw: Any) -> PathMap:
    """[[local, cluster], ...] or ["local=cluster", ...] (the CLI's form) -> pairs; a clear error otherwise."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        raw = [line for line in raw.replace(";", "\n").splitlines() if line.strip()]
    out: PathMap = []
    for item in raw:
        if isinstance(item, str):
            local, sep, remote = item.partition("=")
            if not sep:
                raise EngineError(f"path map entry {item!r}: expected LOCAL_PREFIX=CLUSTER_PREFIX")
        elif isinstance(item, Sequence) and len(item) == 2:
            local, remote = str(item[0]), str(item[1])
        else:
            raise EngineError(f"path map entry {item!r}: expected a [local prefix, cluster prefix] pair")
        local, remote = _trim(local), _trim(remote)
        if not local or not remote:
            raise EngineError(f"path map entry {item!r}: both prefixes are needed")
        out.append((local, remote))
    return out


def _under(path: str, prefix: str) -> Optional[str]:
    """The rest of `path` after `prefix` (with its separator), or None when it is not under it."""
    if path == prefix:
        return ""
    if prefix.endswith(("/", "\\")):
        return path[len(prefix):] if path.startswith(prefix) else None
    if path.startswith(prefix) and path[len(prefix)] in "/\\":
        return path[len(prefix):]
    return None


def _map(path: str, pairs: Iterable[tuple[str, str]]) -> str:
    best: Optional[tuple[int, str, str]] = None
    for src, dst in pairs:
        rest = _under(path, src)
        if rest is not None and (best is None or len(src) > best[0]):
            best = (len(src), dst, rest)
    if best is None:
        return path
    _, dst, rest = best
    if "\\" in rest and ("/" in dst or "://" in dst):  # a Windows path read on a POSIX cluster or a URI
        rest = rest.replace("\\", "/")
    if rest and dst.endswith(("/", "\\")) and rest[0] in "/\\":
        rest = rest[1:]
    return dst + rest


def to_cluster(path: str, pairs: PathMap) -> str:
    return _map(path, pairs)


def to_local(path: str, pairs: PathMap) -> str:
    return _map(path, [(dst, src) for src, dst in pairs])
