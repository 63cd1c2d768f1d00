"""The hnsw file on disk: header and layout checks, temporary files, checksums, full disks.

hnswlib writes with unchecked C++ streams and aborts on some garbage, so a file is checked here
before it is handed over (`header_ok`) and after it was written (`layout_problem`); temporary files
live in the index folder's `.tmp` (same filesystem, for an atomic `os.replace`).
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import uuid
import zlib

from ..errors import DiskFullError

__all__ = ["atomic_write_text", "clean_tmp", "crc_file", "disk_full", "disk_full_error", "file_layout", "header_ok", "layout_problem",
           "tmp_dir", "tmp_name"]


def crc_file(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 22)
            if not block:
                return crc
            crc = zlib.crc32(block, crc)


#: The file layouts the engine's requirements can install (both read and write the same header and
#: level-0 block): upstream hnswlib 0.8 writes every element's link list right after the level-0 block;
#: Chroma's fork (chroma-hnswlib 0.7.x, the wheel the engine gets on Python < 3.13) first writes one
#: float32 per element (the vector norms it keeps), 4 more bytes per element.
LAYOUTS = {"hnswlib": 0, "chroma-hnswlib": 4}


def _links_end(rest: bytes, start: int, count: int) -> int:
    """Where `count` link lists starting at `start` end, or -1 when the data runs out first."""
    pos = start
    for _ in range(count):
        if pos + 4 > len(rest):
            return -1
        (n,) = struct.unpack_from("<I", rest, pos)
        pos += 4 + n
    return pos


def file_layout(path: str, dim: int, elements: int) -> tuple[str, str]:
    """(layout name from LAYOUTS, "") for a complete file, or ("", why it is not complete)."""
    if not header_ok(path, dim):
        return "", "bad or short header"
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(96)
        cur, size_per = struct.unpack("<Q", head[16:24])[0], struct.unpack("<Q", head[24:32])[0]
        if cur != elements:
            return "", f"{cur} elements written, {elements} expected"
        f.seek(96 + cur * size_per)
        rest = f.read()
    ends = {name: _links_end(rest, per * cur, cur) for name, per in LAYOUTS.items()}
    for name, end in ends.items():
        if end == len(rest):
            return name, ""
    best = max(ends.values())
    if best < 0:
        return "", f"truncated at {size} bytes: the link lists of {cur} elements do not fit"
    return "", f"{len(rest) - best} bytes missing or extra at the end (no known hnswlib layout)"


def layout_problem(path: str, dim: int, elements: int) -> str:
    """Why a freshly saved hnswlib file is not complete ("" when it is): header, element count, and
    the level-0 block plus every element's link list (in any layout of LAYOUTS) ending exactly at the
    end of the file."""
    return file_layout(path, dim, elements)[1]


def header_ok(path: str, dim: int) -> bool:
    """Sanity-check the hnswlib header before handing the file to C++ (which may abort on garbage)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8 * 6 + 4 * 2 + 8 * 3 + 8 + 8)
        off_l0, max_el, cur, size_per, label_off, off_data = struct.unpack("<6Q", head[:48])
    except (OSError, struct.error):
        return False
    return (
        cur <= max_el
        and size_per >= dim * 4
        and off_data < size_per
        and label_off < size_per
        and 48 + cur * size_per <= size
        and off_l0 == 0
    )


def tmp_dir(folder: str) -> str:
    """Temporary files live in a subfolder (same filesystem for os.replace) so that a listing of the
    index folder never shows a file that vanishes a moment later."""
    d = os.path.join(folder, ".tmp")
    os.makedirs(d, exist_ok=True)
    return d


def tmp_name(folder: str, prefix: str, suffix: str = "") -> str:
    """A fresh path in the temp folder, not created: whoever writes it creates it with the user's
    umask (mkstemp's 0600 would make the index unreadable to teammates)."""
    return os.path.join(tmp_dir(folder), f"{prefix}{uuid.uuid4().hex}{suffix}")


def clean_tmp(folder: str) -> int:
    """Remove what crashed writers left in `.tmp` (hnsw copies can be GBs); only call with the writer
    lock held, when no other writer can be using them. Returns the bytes freed."""
    d = os.path.join(folder, ".tmp")
    freed = 0
    try:
        names = os.listdir(d)
    except OSError:
        return 0
    for name in names:
        path = os.path.join(d, name)
        try:
            if os.path.isfile(path):
                freed += os.path.getsize(path)
                os.unlink(path)
        except OSError:
            pass
    return freed


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(folder: str, need: int) -> DiskFullError:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = 0
    return DiskFullError(
        f"disk full: the index at {folder} needs about {_mb(need)} more for the search file ({_mb(free)} free);"
        " free some space on that disk and run again (what was indexed is kept)"
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def atomic_write_text(path: str, text: str) -> None:
    folder = os.path.dirname(path) or "."
    tmp = tmp_name(folder, ".tmp-")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if disk_full(exc):
            raise disk_full_error(folder, len(text.encode("utf-8"))) from None
        raise
