"""Every data layout reaches the model in the same shape, colour order and values."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from core.intake.data import conform, load_arrays, open_data, read_image, write_png
from core.errors import DataError
from core.evaluate import predict_source
from core.jobs import run_job

SHAPE = (6, 5, 3)


def _images(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *SHAPE)).astype(np.float32), rng.integers(0, 4, size=n)


def _read(path, shape=SHAPE):
    return load_arrays(open_data(path), shape)


def test_csaw_layout_channels_first_with_float_labels(tmp_path):
    x, y = _images()
    path = tmp_path / "csaw.h5"
    with h5py.File(path, "w") as h5:
        h5["data"] = np.transpose(x, (0, 3, 1, 2))
        h5["label"] = y.astype(np.float64)
    got = _read(path)
    np.testing.assert_array_equal(got.x, x)
    np.testing.assert_array_equal(got.y, y)


def test_h5_channels_last_and_x_y_keys(tmp_path):
    x, y = _images()
    for keys in (("data", "label"), ("x", "y")):
        path = tmp_path / f"{keys[0]}.h5"
        with h5py.File(path, "w") as h5:
            h5[keys[0]] = x
            h5[keys[1]] = y
        got = _read(path)
        np.testing.assert_array_equal(got.x, x)
        np.testing.assert_array_equal(got.y, y)


def test_npz_and_one_hot_labels(tmp_path):
    x, y = _images()
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=np.eye(4)[y])
    got = _read(path)
    np.testing.assert_array_equal(got.x, x)
    np.testing.assert_array_equal(got.y, y)


def test_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([object()], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError):
        _read(path)


def test_png_is_read_as_rgb_not_bgr(tmp_path):
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255  # pure red in RGB
    path = tmp_path / "red.png"
    write_png(path, red)
    import cv2

    assert cv2.imread(str(path))[0, 0].tolist() == [0, 0, 255]  # OpenCV's own view: BGR
    assert read_image(path)[0, 0].tolist() == [255, 0, 0]


def test_grey_and_rgb_conversions_and_area_resize():
    grey = np.full((1, 8, 8, 1), 100.0, np.float32)
    assert conform(grey, (4, 4, 3)).shape == (1, 4, 4, 3)
    np.testing.assert_allclose(conform(grey, (4, 4, 3)), 100.0)
    rgb = np.zeros((1, 4, 4, 3), np.float32)
    rgb[..., 1] = 200.0
    np.testing.assert_allclose(conform(rgb, (4, 4, 1)), 0.587 * 200.0, rtol=1e-5)
    checker = np.indices((8, 8)).sum(0) % 2 * 255.0
    down = conform(checker[None, :, :, None].astype(np.float32), (4, 4, 1))
    np.testing.assert_allclose(down, 127.5)  # area interpolation averages, never aliases


def _class_folders(root, names):
    rng = np.random.default_rng(1)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(2):
            write_png(root / name / f"{i}.png", rng.integers(0, 255, (10, 9, 3)))


def test_class_folders_with_integer_names_keep_their_numbers(tmp_path):
    _class_folders(tmp_path, ["3", "10"])
    got = _read(tmp_path)
    assert sorted(set(got.y.tolist())) == [3, 10]
    assert got.x.shape == (4, *SHAPE)


def test_class_folders_with_words_use_sorted_order(tmp_path):
    _class_folders(tmp_path, ["dog", "cat"])
    source = open_data(tmp_path)
    assert source.labelled and source.class_names == ["cat", "dog"]
    got = load_arrays(source, SHAPE)
    labels = {s.split("/")[-2]: int(y) for s, y in zip(got.sources, got.y)}
    assert labels == {"cat": 0, "dog": 1}


def test_flat_folder_is_unlabelled_recursive_and_skips_bad_files(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "sub").mkdir()
    write_png(tmp_path / "a.png", rng.integers(0, 255, (5, 5, 3)))
    write_png(tmp_path / "sub" / "b.png", rng.integers(0, 255, (5, 5)))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    good = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    source = open_data(tmp_path)
    assert not source.labelled
    got = load_arrays(source, SHAPE)
    assert sorted(s.split("/")[-1] for s in got.sources) == ["a.png", "b.png"]
    reasons = {s.source.split("/")[-1]: s.reason for s in got.skipped}
    assert reasons["empty.png"] == "empty file"
    assert "truncated PNG" in reasons["cut.png"]
    assert "truncated JPEG" in reasons["fake.jpg"]
    assert "not an image" in reasons["notes.txt"]


def test_absurd_png_dimensions_are_skipped_without_decoding(tmp_path):
    header = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + (100000).to_bytes(4, "big") * 2
    (tmp_path / "huge.png").write_bytes(header + b"\0" * 100 + b"IEND\xaeB`\x82")
    with pytest.raises(Exception, match="absurd dimensions"):
        read_image(tmp_path / "huge.png")


def test_folders_stream_in_bounded_batches(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(23):
        write_png(tmp_path / f"{i:02d}.png", rng.integers(0, 255, (5, 5, 3)))
    sizes = [len(b.x) for b in open_data(tmp_path).batches(SHAPE, batch_size=5)]
    assert sizes == [5, 5, 5, 5, 3]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda h5: (h5.create_dataset("data", data=np.zeros((3, 2, 2, 2, 2))), h5.create_dataset("label", data=[0, 1, 2])), "expected images shaped"),
        (lambda h5: (h5.create_dataset("data", data=np.zeros((3, 6, 5, 3))), h5.create_dataset("label", data=[0, 1])), "3 images but 2 labels"),
        (lambda h5: (h5.create_dataset("data", data=np.zeros((2, 6, 5, 3))), h5.create_dataset("label", data=[0.5, 1])), "not a whole number"),
        (lambda h5: h5.create_dataset("pixels", data=np.zeros((2, 6, 5, 3))), "expected arrays named data/label"),
    ],
)
def test_malformed_h5_data_gets_a_clear_error(tmp_path, make, message):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as h5:
        make(h5)
    with pytest.raises(DataError, match=message):
        _read(path)


def test_truncated_and_linked_h5_data_are_refused(tmp_path):
    x, y = _images()
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as h5:
        h5["data"] = x
        h5["label"] = y
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        open_data(cut)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(6 * 5 * 3 * 7, dtype=np.float32).tobytes())
    ext = tmp_path / "ext.h5"
    with h5py.File(ext, "w") as h5:
        h5.create_dataset("data", shape=(7, *SHAPE), dtype="f4", external=[(str(secret), 0, secret.stat().st_size)])
    with pytest.raises(DataError, match="external file"):
        open_data(ext)
    linked = tmp_path / "linked.h5"
    with h5py.File(linked, "w") as h5:
        h5["data"] = h5py.ExternalLink(str(path), "/data")
    with pytest.raises(DataError, match="external link"):
        open_data(linked)


def test_labels_out_of_range_name_the_first_offender(tmp_path, demo_model):
    x = np.zeros((3, 28, 28, 3), np.float32)
    path = tmp_path / "oor.npz"
    np.savez(path, x=x, y=np.array([1, 12, 3]))
    with pytest.raises(DataError, match="label 12 at index 1 is out of range for a 10-class model"):
        run_job(predict_source(demo_model, open_data(path), "255"))


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_data(tmp_path / "nope.h5")
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        open_data(tmp_path / "empty.h5")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        open_data(tmp_path / "dir")


def test_damaged_chunk_deep_inside_hdf5_is_a_clear_error(tmp_path):
    """The pre-scan reads the first images only; a chunk damaged further in still ends in a refusal."""
    path = tmp_path / "damaged.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("data", data=np.random.default_rng(0).integers(0, 255, (100, 6, 5, 3), dtype=np.uint8),
                          chunks=(10, 6, 5, 3), compression="gzip")
        h5["label"] = np.zeros(100, np.uint8)
        offset = h5["data"].id.get_chunk_info(9).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 2 : offset + 40] = b"\xff" * 38
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as h5, pytest.raises(OSError):  # control: h5py's own error is not a refusal
        h5["data"][90:]
    source = open_data(path)
    with pytest.raises(DataError, match="images 80-99 cannot be read"):
        for _ in source.batches(SHAPE, batch_size=20):
            pass
