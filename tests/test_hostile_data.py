"""Hostile data files, round two (issue 12): declared-but-unwritten sets, bombs, lying archives, special files.

As in tests/test_hostile_models.py: each file is generated here, shown to harm
a naive reader first, then opened in a fresh process whose refusal must be one
line naming the file and the problem, with low peak memory, under 60 s and
under 100 MB written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import zipfile

import h5py
import numpy as np
import pytest
from numpy.lib import format as npy

from tests.hostile import (
    bomb_npy_member,
    measure_refusal,
    npy_header,
    ratio_chunk,
    repeated_deflate,
    write_raw_zip,
    zip_member,
)
from tests.test_hostile_models import GB, ROOT, assert_small_refusal


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# ------------------------------------------------------------ unwritten data sets


@pytest.mark.parametrize("unwritten", ["data", "label"])
def test_data_set_declaring_millions_of_images_it_never_stored_is_refused(tmp_path, unwritten):
    path = tmp_path / f"unwritten_{unwritten}.h5"
    with h5py.File(path, "w") as h5:
        if unwritten == "data":
            h5.create_dataset("data", shape=(8_000_000, 28, 28, 1), dtype="u1")
            h5.create_dataset("label", shape=(8_000_000,), dtype="u1")
        else:
            h5["data"] = np.zeros((10, 8, 8, 3), np.uint8)
            h5.create_dataset("label", shape=(10, 100_000_000), dtype="f4")
    with h5py.File(path, "r") as h5:  # control: a plain reader sees gigabytes (of fill values)
        declared = h5[unwritten].size * h5[unwritten].dtype.itemsize
        assert declared > 3 * GB and h5[unwritten].id.get_storage_size() == 0
    assert path.stat().st_size < 1 << 20
    assert_small_refusal(measure_refusal("data", path, tmp_path), path, "never written")


def test_image_count_over_the_budget_is_refused_and_the_limit_can_be_raised(tmp_path):
    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as h5:
        h5["data"] = np.zeros((200, 8, 8, 3), np.uint8)
        h5["label"] = np.zeros(200, np.uint8)
    result = measure_refusal("data", path, tmp_path, env={"TROJANSCOPE_MAX_IMAGES": "100"})
    assert_small_refusal(result, path, "declares 200 images, over the limit of 100")
    assert "TROJANSCOPE_MAX_IMAGES" in result["message"]
    assert measure_refusal("data", path, tmp_path, env={"TROJANSCOPE_MAX_IMAGES": "200"})["code"] == 0


# ----------------------------------------------------------- bombs under the limits


def test_npz_with_a_3_5_gib_x_under_the_ratio_limit_is_refused(tmp_path):
    path = tmp_path / "heavy.npz"
    write_raw_zip(path, [bomb_npy_member("x.npy", (458_752, 64, 128), "|u1", 190), zip_member("y.npy", _npy(np.zeros(4)))])
    with zipfile.ZipFile(path) as archive:  # control: what np.load would allocate, under the old ratio limit
        info = archive.getinfo("x.npy")
        with archive.open(info) as handle:
            npy.read_magic(handle)
            shape, _, dtype = npy.read_array_header_1_0(handle)
        assert np.prod(shape) * dtype.itemsize == 3584 << 20 and info.file_size / info.compress_size < 200
    assert path.stat().st_size < 40 << 20
    assert_small_refusal(measure_refusal("data", path, tmp_path), path, "x.npy")


def test_single_3_5_gib_gzip_chunk_is_refused(tmp_path):
    path = tmp_path / "onechunk.h5"
    stream, _, size = repeated_deflate(ratio_chunk(900), 3584, zlib_wrapper=True)
    with h5py.File(path, "w") as h5:
        data = h5.create_dataset("data", shape=(458_752, 64, 128), dtype="u1", chunks=(458_752, 64, 128), compression="gzip")
        data.id.write_direct_chunk((0, 0, 0), stream)
        h5["label"] = np.zeros(458_752, np.uint8)
    with h5py.File(path, "r") as h5:  # control: reading one image inflates the whole chunk; the ratio looks tame
        data = h5["data"]
        assert np.prod(data.chunks) == size == 3584 << 20
        assert size / data.id.get_storage_size() < 1000
    assert_small_refusal(measure_refusal("data", path, tmp_path), path, "chunks of 3.5 GB")


# --------------------------------------------------------------- lying archives


def test_npy_header_declaring_a_trillion_images_is_refused(tmp_path):
    path = tmp_path / "liar.npz"
    body = npy_header((10**12, 28, 28), "|u1") + bytes(784)
    write_raw_zip(path, [zip_member("x.npy", body), zip_member("y.npy", _npy(np.zeros(1)))])
    with pytest.raises((MemoryError, ValueError)):  # control: np.load fails with an internal error
        np.load(path)["x"]
    assert_small_refusal(measure_refusal("data", path, tmp_path), path, "lying .npy header")


@pytest.mark.parametrize("lie", ["encrypted", "bad CRC"])
def test_lying_npz_members_are_refused(tmp_path, lie):
    x = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)
    member = zip_member("x.npy", _npy(x))
    if lie == "encrypted":
        member["flags"] = 1
    else:
        member["crc"] ^= 0x5A5A
    path = tmp_path / "lying.npz"
    write_raw_zip(path, [member, zip_member("y.npy", _npy(np.zeros(4)))])
    with pytest.raises((RuntimeError, zipfile.BadZipFile)):  # control: np.load raises a non-TrojanScope error
        np.load(path)["x"]
    assert_small_refusal(measure_refusal("data", path, tmp_path), path, "encrypted" if lie == "encrypted" else "CRC")


# ---------------------------------------------------------------- special files


def test_fifo_given_as_data_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "clean.h5"
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: open(fifo, "rb").close(), daemon=True)
    reader.start()
    reader.join(1.0)
    assert reader.is_alive()  # control: a plain open() waits for a writer forever
    os.close(os.open(fifo, os.O_WRONLY))  # release it
    reader.join(5.0)
    assert_small_refusal(measure_refusal("data", fifo, tmp_path, timeout=30), fifo, "FIFO (named pipe)")


def test_link_to_dev_zero_named_npz_is_refused(tmp_path):
    link = tmp_path / "data.npz"
    link.symlink_to("/dev/zero")
    with open(link, "rb") as handle:  # control: a reader never reaches the end
        assert len(handle.read(8 << 20)) == 8 << 20
    assert_small_refusal(measure_refusal("data", link, tmp_path), link, "character device")


@pytest.mark.parametrize("kind", ["fifo", "liar"])
def test_cli_refuses_hostile_data_with_exit_2_and_one_line(tmp_path, kind):
    path = tmp_path / ("clean.npz" if kind == "liar" else "clean.h5")
    if kind == "fifo":
        os.mkfifo(path)
    else:
        write_raw_zip(path, [zip_member("x.npy", npy_header((10**12, 28, 28), "|u1") + bytes(784))])
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "evaluate", "--model", str(tmp_path / "unused.keras"), "--clean", str(path), "--json"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and path.name in lines[0], done.stderr
