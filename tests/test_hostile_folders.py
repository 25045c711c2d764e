"""Folders that reach outside themselves (issue 12): links out, loops, repeats and special files.

In both layouts (flat recursive, class sub-folders) every such entry is
listed in ``skipped`` with its own reason, and nothing outside the chosen
folder is ever opened.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.intake.data import open_data, write_png
from tests.hostile import measure_refusal


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, np.full((8, 8, 3), value, np.uint8))


def _reasons(skipped: list[dict], root: Path) -> dict[str, str]:
    return {str(Path(s["source"]).relative_to(root)): s["reason"] for s in skipped}


def test_flat_folder_skips_links_out_loops_repeats_and_special_files(tmp_path):
    outside = tmp_path / "outside"
    _image(outside / "secret.png", 200)
    root = tmp_path / "scan"
    _image(root / "a.png", 10)
    _image(root / "sub" / "b.png", 20)
    (root / "link_out.png").symlink_to(outside / "secret.png")
    (root / "loop").symlink_to(root)
    (root / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(root / "pipe.png")
    (root / "again.png").symlink_to(root / "a.png")
    (root / "sub_again").symlink_to(root / "sub")
    # Control: a plain walk lists every one of them, and the link reads the outside file.
    naive = {f for _, _, files in os.walk(root) for f in files}
    assert {"link_out.png", "zero.png", "pipe.png", "again.png"} <= naive
    assert (root / "link_out.png").read_bytes() == (outside / "secret.png").read_bytes()

    source = open_data(root)
    assert sorted(str(f.relative_to(root)) for f in source.files) == ["a.png", "sub/b.png"]
    result = measure_refusal("data", root, tmp_path, timeout=60)
    assert result["code"] == 0 and result["seconds"] < 60 and result["peak_mb"] < 512
    reasons = _reasons(result["skipped"], root)
    assert "outside the chosen folder" in reasons["link_out.png"]
    assert "loop" in reasons["loop"]
    assert "character device" in reasons["zero.png"]
    assert "FIFO" in reasons["pipe.png"]
    assert "repeats" in reasons["again.png"] and "repeats" in reasons["sub_again"]
    assert not any("empty file" in r for r in reasons.values())
    assert len(reasons) == 6


def test_class_folders_that_are_links_out_or_loops_are_skipped(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _image(elsewhere / "x.png", 99)
    root = tmp_path / "classes"
    _image(root / "0" / "a.png", 1)
    _image(root / "1" / "b.png", 2)
    (root / "2").symlink_to(elsewhere)
    (root / "3").symlink_to(root)
    (root / "4").symlink_to(root / "0")
    (root / "1" / "self").symlink_to(root / "1")
    # Control: following the links would read elsewhere/x.png and class 0 twice.
    assert (root / "2" / "x.png").exists() and (root / "4" / "a.png").exists()

    source = open_data(root)
    assert source.kind == "class folders"
    assert [str(f.relative_to(root)) for f in source.files] == ["0/a.png", "1/b.png"]
    assert source.labels == [0, 1]
    result = measure_refusal("data", root, tmp_path, timeout=60)
    reasons = _reasons(result["skipped"], root)
    assert "outside the chosen folder" in reasons["2"]
    assert "loop" in reasons["3"]
    assert "repeats" in reasons["4"]
    assert "loop" in reasons["1/self"]
    assert result["code"] == 0 and result["peak_mb"] < 512 and result["seconds"] < 60


def test_a_link_inside_the_folder_to_a_file_not_yet_listed_is_read(tmp_path):
    root = tmp_path / "scan"
    _image(root / "store" / "real.png", 50)
    (root / "alias.png").symlink_to(root / "store" / "real.png")
    source = open_data(root)
    # Listed once, under the first path reached; the second path is a repeat.
    assert [str(f.relative_to(root)) for f in source.files] == ["alias.png"]
    batches = list(source.batches((8, 8, 3)))
    assert batches[0].x.shape[0] == 1 and float(batches[0].x.mean()) == 50.0
    assert any("repeats" in s.reason for b in batches for s in b.skipped)
