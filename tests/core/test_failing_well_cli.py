"""The command line failing well: a corrupt block fails one tile (retried next run), every bad input
gets one line, and the whole bad-input sweep leaves an existing index's search results byte-identical."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from loopback_servers import StallServer, closed_port

from plugin.core.captioners.openai_api import openai_compat
from plugin.core.cli import main
from plugin.core.indexing import index_info
from tests.core import rasters
from tests.core.rasters import blocky, corrupt_block

QUERIES = ["sandy beach next to the sea", "dense forest", "bright square building"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_corrupt_block_fails_one_tile_and_the_next_run_retries_it(tmp_path: Path, capsys) -> None:
    good = rasters.north_up(str(tmp_path), width=128, height=128)
    path = blocky(tmp_path)
    pristine = tmp_path / "pristine.tif"
    shutil.copy(path, pristine)
    corrupt_block(path, 1, 1)  # pixels 64..127: inside tile (0, 0) of a 256 px grid
    idx = str(tmp_path / "idx")
    rc, out, err = _run(capsys, "index", "--index", idx, "--tile-size", "256", "--quiet", path, good)
    assert rc == 3 and "Traceback" not in out + err  # finished, with failed tiles (not "error", not "all done")
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("blocky:"))
    assert "16 tiles planned, 15 captioned" in line and "1 FAILED" in line
    assert "1 tile(s) could not be read (the next run retries them); first: pixels 0,0 256x256 cannot be read" in out
    assert "north_up: 1 tiles planned, 1 captioned" in out  # the good raster beside it is indexed
    rows = {r["name"]: r for r in index_info(idx)["rasters"]}
    assert rows["blocky"]["tiles"] == 15 and rows["blocky"]["state"] == "indexing"
    assert rows["north_up"]["state"] == "indexed"
    # Next run: only the failed tile is read again (still corrupt: still one failure, nothing else redone).
    rc, out, _ = _run(capsys, "index", "--index", idx, "--tile-size", "256", "--quiet", "--format", "json", path)
    (entry,) = json.loads(out)["rasters"]
    assert rc == 3  # the same status in every format
    assert (entry["tiles_new"], entry["tiles_failed"], entry["failed_tiles"][0]["window"]) == (0, 1, [0, 0, 256, 256])
    # Repaired in place (same content as intended): the retry captions it and the raster is complete.
    shutil.copy(pristine, path)
    rc, out, _ = _run(capsys, "index", "--index", idx, "--tile-size", "256", "--quiet", path)
    assert rc == 0 and "16 tiles planned, 1 captioned" in out
    assert {r["name"]: r for r in index_info(idx)["rasters"]}["blocky"]["state"] == "indexed"


def test_index_exit_status_tells_done_from_done_with_failures_from_error(tmp_path: Path, capsys) -> None:
    """0 all done, 3 finished but a raster (or tiles) failed, 1 error (did not finish), in table and JSON; --help says so."""
    good = rasters.north_up(str(tmp_path), width=64, height=64)
    bad = tmp_path / "notes.tif"
    bad.write_text("this is not a GeoTIFF")
    for fmt in ("table", "json"):
        idx = str(tmp_path / f"idx-{fmt}")
        ix = ["index", "--index", idx, "--tile-size", "64", "--quiet", "--format", fmt]
        rc, out, err = _run(capsys, *ix, good, str(bad))
        assert rc == 3, (fmt, out, err)
        if fmt == "json":
            failed = [r for r in json.loads(out)["rasters"] if "error" in r]
            assert [r["name"] for r in failed] == ["notes.tif"] and "cannot read" in failed[0]["error"]
        else:
            assert "FAILED  notes.tif: " in out and "north_up: 1 tiles planned, 1 captioned" in out
        assert _run(capsys, *ix, good)[0] == 0  # all done
        rc, out, err = _run(capsys, *ix, str(bad))
        assert rc == 1 and not out and err.startswith("error: ")  # an error (no raster opens), one line
    with pytest.raises(SystemExit) as ex:
        main(["index", "--help"])
    assert ex.value.code == 0
    text = capsys.readouterr().out
    assert "exit status:" in text and "  3    finished, but some tiles or rasters failed" in text


def test_unreadable_header_or_sample_fails_alone_in_one_line(tmp_path: Path, capsys) -> None:
    data = open(blocky(tmp_path, "src.tif"), "rb").read()
    header = tmp_path / "header.tif"
    header.write_bytes(data[:8] + b"\0" * 200 + data[208:])
    # uint16: the stretch sample reads a grid of windows; every block corrupt -> the sample fails.
    sample = rasters.write_raster(str(tmp_path / "sample.tif"), rasters.pattern(3, 256, 256, "uint16"), tiled=True,
                                  blockxsize=64, blockysize=64, compress="deflate")
    for bx in range(4):
        for by in range(4):
            corrupt_block(sample, bx, by)
    rc, out, err = _run(capsys, "index", "--index", str(tmp_path / "idx"), "--quiet", str(header), sample)
    assert rc == 1 and "Traceback" not in out + err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: cannot read raster") and "header.tif" in line and "sample.tif" in line


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An index of two rasters and its search results (JSON bytes) for a few queries."""
    folder = tmp_path_factory.mktemp("sweep")
    a = rasters.north_up(str(folder), width=192, height=128)
    b = rasters.geographic(str(folder), width=128, height=128)
    idx = str(folder / "idx")
    assert main(["index", "--index", idx, "--tile-size", "64", "--quiet", a, b]) == 0
    return folder, idx, a


def _snapshot(capsys, idx: str) -> list[bytes]:
    capsys.readouterr()
    out = []
    for q in QUERIES:
        assert main(["search", "--index", idx, "--top", "20", "--format", "json", q]) == 0
        out.append(capsys.readouterr().out.encode())
    return out


@pytest.mark.slow
def test_bad_input_sweep_leaves_search_results_byte_identical(built, capsys, monkeypatch) -> None:
    folder, idx, good = built
    before = _snapshot(capsys, idx)
    assert json.loads(before[0])  # there are hits to compare
    text = folder / "notes.tif"
    text.write_text("this is not a GeoTIFF")
    trunc = folder / "truncated.tif"
    trunc.write_bytes(open(good, "rb").read()[:3000])
    empty = folder / "empty_folder"
    empty.mkdir(exist_ok=True)
    stall = StallServer()
    monkeypatch.setattr(openai_compat, "CHECK_READ_TIMEOUT_S", 0.5)
    bad_utf8 = b"caf\xe9".decode("utf-8", "surrogateescape")
    ix = ["index", "--index", idx, "--quiet"]
    cases = [
        (["search", "--index", idx, ""], "the query is empty"),
        (["search", "--index", idx, "\x01\x02\t\x1b"], "the query is empty"),
        (["search", "--index", idx, "\u200b\u200d"], "the query is empty"),
        (["search", "--index", idx, bad_utf8], "not valid UTF-8"),
        ([*ix, bad_utf8 + ".tif"], "not valid UTF-8"),
        ([*ix, "--bands", "1,2,9", good], "band"),
        ([*ix, str(folder / "missing.tif")], "raster not found"),
        ([*ix, str(text)], "cannot read raster"),
        ([*ix, str(trunc)], "cannot read"),
        ([*ix, str(empty)], "no rasters"),
        ([*ix, "--captioner", "nonsense", good], "unknown captioner"),
        ([*ix, "--captioner", f"openai:http://127.0.0.1:{closed_port()}/v1#m", good], "connection refused"),
        ([*ix, "--captioner", f"openai:{stall.url}#m", "--connect-timeout", "0.5", good], "sent no answer"),
        ([*ix, "--tile-size", "0", good], "tile"),
        (["search", "--index", idx, "--top", "0", "beach"], "top must be at least 1"),
    ]
    try:
        for argv, expected in cases:
            rc, out, err = _run(capsys, *argv)
            assert rc == 1, (argv, out, err)
            assert "Traceback" not in out + err
            (line,) = err.strip().splitlines()  # exactly one line
            assert line.startswith("error: ") and expected in line, (argv, line)
        for argv in ([*ix, "--overlap", "1.5", good], [*ix, "--scales", "0", good]):
            with pytest.raises(SystemExit) as ex:  # argparse's own usage line + one error line
                main(argv)
            assert ex.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith("usage: ") is False
    finally:
        stall.close()
    assert _snapshot(capsys, idx) == before
    assert not os.path.exists(os.path.join(idx, "vrt"))
