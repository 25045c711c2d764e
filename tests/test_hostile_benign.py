"""The walls of issue 12 leave ordinary files alone: benign look-alikes of every hostile class still load."""

from __future__ import annotations

import zipfile

import cv2
import h5py
import numpy as np

from core.intake.data import load_arrays, open_data
from core.intake.models import load_model
from tests.hostile import png_bytes, tiny_model

SHAPE = (8, 8, 3)


def _images(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *SHAPE)).astype(np.uint8), rng.integers(0, 3, n)


def test_compressed_npz_loads(tmp_path):
    x, y = _images()
    path = tmp_path / "compressed.npz"
    np.savez_compressed(path, x=x, y=y)
    got = load_arrays(open_data(path), SHAPE)
    np.testing.assert_array_equal(got.x, x.astype(np.float32))
    np.testing.assert_array_equal(got.y, y)


def test_fortran_ordered_npz_keeps_its_values(tmp_path):
    x, y = _images(6)
    path = tmp_path / "fortran.npz"
    np.savez(path, x=np.asfortranarray(x), y=y)
    np.testing.assert_array_equal(load_arrays(open_data(path), SHAPE).x, x.astype(np.float32))


def test_chunked_gzip_hdf5_data_loads_in_batches(tmp_path):
    x, y = _images(300)
    path = tmp_path / "chunked.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("data", data=x, chunks=(16, 8, 8, 3), compression="gzip", compression_opts=9)
        h5.create_dataset("label", data=y, chunks=(64,), compression="gzip")
    source = open_data(path)
    sizes = [len(b.x) for b in source.batches(SHAPE, batch_size=128)]
    assert sizes == [128, 128, 44]
    got = load_arrays(open_data(path), SHAPE)
    np.testing.assert_array_equal(got.x, x.astype(np.float32))
    np.testing.assert_array_equal(got.y, y)


def test_keras_archive_with_assets_loads_and_predicts_the_same(tmp_path):
    model = tiny_model()
    plain = tmp_path / "plain.keras"
    model.save(plain)
    with_assets = tmp_path / "assets.keras"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(with_assets, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item, zin.read(item))
        zout.writestr("assets/notes.txt", "class names: cat, dog, bird\n" * 100)
        zout.writestr("assets/vocab/labels.txt", "cat\ndog\nbird\n")
    loaded = load_model(with_assets)
    x = np.random.default_rng(1).random((4, *SHAPE), dtype=np.float32)
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_legacy_course_files_load(csaw_dir):
    full = load_model(csaw_dir / "fine_pruned_sunglasses_model.h5")
    assert full.summary.num_classes == 1283 and full.summary.params == 601_643
    weights = load_model(csaw_dir / "sunglasses_bd_weights.h5", arch=csaw_dir / "fine_pruned_sunglasses_model.h5")
    assert weights.summary.format == "weights+arch" and weights.summary.params == 601_643


def test_folder_of_odd_but_valid_images_is_read_whole(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    cv2.imwrite(str(folder / "one_pixel.png"), np.array([[[30, 20, 10]]], np.uint8))  # BGR on disk
    cv2.imwrite(str(folder / "sixteen_bit.png"), np.full((4, 4), 0xABCD, np.uint16))
    rgba = np.zeros((5, 5, 4), np.uint8)
    rgba[...] = (40, 50, 60, 128)  # BGRA on disk
    cv2.imwrite(str(folder / "rgba.png"), rgba)
    palette = bytes([255, 0, 0, 0, 0, 255])  # index 0 red, index 1 blue
    (folder / "palette.png").write_bytes(png_bytes(2, 1, color_type=3, bit_depth=8, rows=[bytes([0, 1])], palette=palette))
    source = open_data(folder)
    batches = list(source.batches((2, 2, 3)))
    assert [s for b in batches for s in b.skipped] == []
    got = {name.split("/")[-1]: x for b in batches for name, x in zip(b.sources, b.x)}
    assert sorted(got) == ["one_pixel.png", "palette.png", "rgba.png", "sixteen_bit.png"]
    np.testing.assert_array_equal(got["one_pixel.png"][0, 0], [10, 20, 30])  # RGB
    np.testing.assert_array_equal(got["sixteen_bit.png"][0, 0], [0xAB] * 3)
    np.testing.assert_array_equal(got["rgba.png"][0, 0], [60, 50, 40])
    np.testing.assert_allclose(got["palette.png"][0, :, 0], [255, 0])  # 2x1 resized to 2x2 keeps columns
    np.testing.assert_allclose(got["palette.png"][0, :, 2], [0, 255])
