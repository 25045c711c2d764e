"""Hostile model files, round two (issue 12): memory and disk bombs, lying archives, absurd JSON.

Every file is built here from a small generator. Each test first shows that
the file really harms a naive reader (the control: the size a plain h5py /
zipfile / Keras reader would allocate or write, or the exception it raises),
then opens it in a fresh process and asserts a clear refusal (exit-2 class,
one line naming the file and the problem) that stays small: peak memory well
under 1 GB, nothing left in the temporary folder, less than 100 MB written,
well under 60 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import pytest

from tests.hostile import (
    bomb_npy_member,
    keras_members,
    measure_refusal,
    ratio_chunk,
    repeated_deflate,
    rewrite_keras_config,
    tiny_model,
    write_raw_zip,
)

GB = 1 << 30
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = tiny_model()
    model.save(root / "tiny.keras")
    model.save(root / "tiny.h5")
    return root


def assert_small_refusal(result: dict, path: Path, problem: str) -> None:
    """The refusal is exit-2 class, one line naming the file and the problem, and cheap."""
    assert result["code"] == 2, result
    message = result["message"]
    assert "\n" not in message and path.name in message, message
    assert problem in message, message
    assert result["peak_mb"] < 512 and result["child_peak_mb"] < 512, result  # the issue allows 1 GB
    assert result["seconds"] < 60, result
    assert result["written_mb"] < 100 and result["tmp_left_mb"] < 100, result


def _member(name: str, ratio: int, mib: int) -> dict:
    data, crc, size = repeated_deflate(ratio_chunk(ratio), mib)
    return {"name": name, "data": data, "crc": crc, "size": size, "method": 8}


# ------------------------------------------------------------ unwritten data sets


def test_unwritten_kernel_declaring_gigabytes_is_refused(tiny_files, tmp_path):
    path = tmp_path / "unwritten.h5"
    path.write_bytes((tiny_files / "tiny.h5").read_bytes())
    with h5py.File(path, "r+") as h5:
        kernels = []
        h5.visititems(lambda n, o: kernels.append(n) if isinstance(o, h5py.Dataset) and o.ndim == 2 else None)
        del h5[kernels[0]]
        h5.create_dataset(kernels[0], shape=(30_000, 30_000), dtype="f4")  # allocated late: never written
    with h5py.File(path, "r") as h5:  # control: what a plain reader would allocate
        kernel = h5[kernels[0]]
        assert kernel.size * kernel.dtype.itemsize > 3 * GB and kernel.id.get_storage_size() == 0
    assert path.stat().st_size < 1 << 20
    assert_small_refusal(measure_refusal("model", path, tmp_path), path, "never written")


# ------------------------------------------------------------- architecture bomb


def test_architecture_bomb_is_refused_before_keras_builds_it(tiny_files, tmp_path):
    from core.intake.param_estimate import estimate_params
    from core.intake.tf_env import keras

    def widen(units):
        def edit(config):
            config["config"]["layers"][-1]["config"]["units"] = units
            return config

        return edit

    small, bomb = tmp_path / "small.keras", tmp_path / "bomb.keras"
    rewrite_keras_config(tiny_files / "tiny.keras", small, widen(50))
    rewrite_keras_config(tiny_files / "tiny.keras", bomb, widen(50_000_000))
    with zipfile.ZipFile(small) as z:
        small_config = json.loads(z.read("config.json"))
    with zipfile.ZipFile(bomb) as z:
        bomb_config = json.loads(z.read("config.json"))
    # Control: the estimate is Keras's own count on the small twin, and the bomb asks for billions.
    built = keras().models.model_from_json(json.dumps(small_config))
    assert estimate_params(small_config) == built.count_params()
    assert estimate_params(bomb_config) > 3_000_000_000 and bomb.stat().st_size < 64_000
    assert_small_refusal(measure_refusal("model", bomb, tmp_path), bomb, "architecture declares")


# ----------------------------------------------------------- bombs under the limits


def test_weights_member_of_3_5_gib_under_the_ratio_limit_is_refused(tiny_files, tmp_path):
    members = [m for m in keras_members(tiny_files / "tiny.keras") if m["name"] != "model.weights.h5"]
    members.append(_member("model.weights.h5", 190, 3584))
    path = tmp_path / "heavy.keras"
    write_raw_zip(path, members)
    from keras.src.saving import saving_lib

    with zipfile.ZipFile(path) as archive:  # control: under every ratio guard, 3.5 GiB once read
        info = archive.getinfo("model.weights.h5")
        assert info.file_size == 3584 << 20 and info.file_size / info.compress_size < 200
        saving_lib._reject_zip_bomb(archive, "model.weights.h5")  # Keras's own guard lets it through
        with archive.open(info) as handle:
            assert len(handle.read(8 << 20)) == 8 << 20  # it really inflates
    assert_small_refusal(measure_refusal("model", path, tmp_path), path, "model.weights.h5")


def test_members_keras_would_extract_past_the_disk_budget_are_refused(tiny_files, tmp_path):
    members = keras_members(tiny_files / "tiny.keras")
    members += [_member(f"assets/blob{i}.bin", 95, 800) for i in range(3)]
    path = tmp_path / "extract.keras"
    write_raw_zip(path, members)
    from keras.src.saving import saving_lib

    with zipfile.ZipFile(path) as archive:  # control: Keras extracts every member of such an archive
        saving_lib._reject_zip_extract_bomb(archive)  # its guard lets this through
        assert len(archive.infolist()) > 3 and sum(i.file_size for i in archive.infolist()) > 2 * GB
    result = measure_refusal("model", path, tmp_path)
    assert_small_refusal(result, path, "temporary folder")


def test_npz_weights_that_expand_through_tolist_are_refused(tiny_files, tmp_path):
    inner = tmp_path / "weights.npz"
    write_raw_zip(inner, [bomb_npy_member("layers/dense/vars/0.npy", (100 << 20,), "<f4", 190)])
    members = [m for m in keras_members(tiny_files / "tiny.keras") if m["name"] != "model.weights.h5"]
    import zlib

    data = inner.read_bytes()
    members.append({"name": "model.weights.npz", "data": data, "crc": zlib.crc32(data), "size": len(data), "method": 0})
    path = tmp_path / "npzweights.keras"
    write_raw_zip(path, members)
    from keras.src.saving import saving_lib

    with zipfile.ZipFile(inner) as npz:  # control: Keras's npz guard passes it; tolist() makes 100 M Python floats
        info = npz.infolist()[0]
        assert info.file_size < saving_lib._NPZ_MEMBER_BOMB_FLOOR_BYTES
        assert (info.file_size // 4) * 32 > 3 * GB
    assert path.stat().st_size < 10 << 20
    assert_small_refusal(measure_refusal("model", path, tmp_path), path, "Python lists")


# --------------------------------------------------------------- lying archives


def test_encrypted_member_is_refused(tiny_files, tmp_path):
    members = keras_members(tiny_files / "tiny.keras")
    for m in members:
        if m["name"] == "model.weights.h5":
            m["flags"] = 1
    path = tmp_path / "encrypted.keras"
    write_raw_zip(path, members)
    with zipfile.ZipFile(path) as archive, pytest.raises(RuntimeError, match="encrypted"):  # control
        archive.read("model.weights.h5")
    assert_small_refusal(measure_refusal("model", path, tmp_path), path, "encrypted")


def test_directory_that_understates_a_member_is_refused(tiny_files, tmp_path):
    members = keras_members(tiny_files / "tiny.keras")
    for m in members:
        if m["name"] == "model.weights.h5":
            m["central_size"] = m["size"] - 512
    path = tmp_path / "understated.keras"
    write_raw_zip(path, members)
    with zipfile.ZipFile(path) as archive, pytest.raises(zipfile.BadZipFile, match="CRC"):  # control
        archive.read("model.weights.h5")
    assert_small_refusal(measure_refusal("model", path, tmp_path), path, "CRC")


def test_config_nested_50000_levels_is_refused(tiny_files, tmp_path):
    path = tmp_path / "deep.h5"
    path.write_bytes((tiny_files / "tiny.h5").read_bytes())
    deep = '{"class_name": "Sequential", "config": {"layers": [' + "[" * 50_000 + "]" * 50_000 + "]}}"
    with h5py.File(path, "r+") as h5:
        h5.attrs["model_config"] = deep
    with pytest.raises(RecursionError):  # control: Python's json gives up with an internal error
        json.loads(deep)
    assert_small_refusal(measure_refusal("model", path, tmp_path), path, "nested 50003 levels")


# ---------------------------------------------------------------- special files


def test_model_that_is_a_link_to_dev_zero_or_a_fifo_is_refused(tmp_path):
    link = tmp_path / "model.keras"
    link.symlink_to("/dev/zero")
    with open(link, "rb") as handle:  # control: it never ends
        assert handle.read(1 << 20) == bytes(1 << 20) and handle.read(1) == b"\0"
    assert_small_refusal(measure_refusal("model", link, tmp_path), link, "character device")
    fifo = tmp_path / "model.h5"
    os.mkfifo(fifo)
    assert_small_refusal(measure_refusal("model", fifo, tmp_path, timeout=30), fifo, "FIFO")


# ------------------------------------------------------------------ CLI and isolation


@pytest.mark.parametrize("name", ["bomb.keras", "deep.h5"])
def test_cli_refuses_with_exit_2_and_one_line(tiny_files, tmp_path, name):
    path = tmp_path / name
    if name == "bomb.keras":
        def edit(config):
            config["config"]["layers"][-1]["config"]["units"] = 50_000_000
            return config

        rewrite_keras_config(tiny_files / "tiny.keras", path, edit)
    else:
        path.write_bytes((tiny_files / "tiny.h5").read_bytes())
        with h5py.File(path, "r+") as h5:
            h5.attrs["model_config"] = "[" * 50_000 + "]" * 50_000
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "evaluate", "--model", str(path), "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and name in lines[0], done.stderr
    assert done.stdout == ""


def test_a_bomb_that_slips_past_the_checks_kills_only_the_child(tmp_path, monkeypatch):
    """The wall behind the checks: a scan that allocates without bound is stopped and reported."""
    from core.intake.budget import Budget
    from core.errors import DataError
    from core.intake.isolation import run_isolated

    budget = Budget(memory_bytes=256 << 20, disk_bytes=256 << 20, max_images=10, scan_seconds=20)
    with pytest.raises(DataError, match=r"refused: .*exceeded 1.25 GB"):
        run_isolated("tests.hostile:allocate_forever", (), "runaway.npz", budget, DataError)
    slow = Budget(memory_bytes=256 << 20, disk_bytes=256 << 20, max_images=10, scan_seconds=2)
    with pytest.raises(DataError, match="took longer than 2 s"):
        run_isolated("tests.hostile:spin_forever", (), "slow.h5", slow, DataError)
