"""Data that does not fit the model is refused with both shapes named, unless the analyst allows the conversion (issue 23).

Each wrong-shape case (channels, size, label range, pixel range) through the engine, the CLI and the GUI's data slot.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import cli
from core.errors import DataError
from core.intake.data import Conversion, open_data
from core.intake.fit import check_fit, pair
from tests.conftest import wait_idle


def _h5(path, x_nchw, y):
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=x_nchw)
        f.create_dataset("label", data=np.asarray(y, np.float32))
    return path


@pytest.fixture(scope="module")
def bad_sets(demo_arrays, tmp_path_factory):
    """Variants of the demo's clean test set (a 28x28x3 model's data), each wrong in one way."""
    root = tmp_path_factory.mktemp("bad_sets")
    x = np.asarray(demo_arrays[1].x[:60], np.float32)  # N, 28, 28, 3, 0..255
    y = np.asarray(demo_arrays[1].y[:60])
    grey = x.mean(axis=-1, keepdims=True)
    big = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    out_of_range = y.copy()
    out_of_range[7] = 10
    standardised = (x - x.mean()) / x.std()
    nchw = lambda a: np.transpose(a, (0, 3, 1, 2)).astype(np.float32)  # noqa: E731
    return {
        "grey": _h5(root / "gray1.h5", nchw(grey), y),
        "big": _h5(root / "big32.h5", nchw(big), y),
        "labels": _h5(root / "labels.h5", nchw(x), out_of_range),
        "standardised": _h5(root / "standardised.h5", nchw(standardised), y),
        "good": _h5(root / "good.h5", nchw(x), y),
    }


def test_engine_refuses_each_misfit_and_names_both_shapes(demo_model, bad_sets):
    with pytest.raises(DataError) as grey:
        check_fit(demo_model, open_data(bad_sets["grey"]), "clean data")
    assert "28x28x1" in str(grey.value) and "28x28x3" in str(grey.value) and grey.value.fixed_by == ("channels",)
    with pytest.raises(DataError) as big:
        check_fit(demo_model, open_data(bad_sets["big"]), "clean data")
    assert "32x32x3" in str(big.value) and "28x28x3" in str(big.value) and big.value.fixed_by == ("resize",)
    with pytest.raises(DataError, match="label 10 at index 7 is out of range for a 10-class model"):
        check_fit(demo_model, open_data(bad_sets["labels"]), "clean data")
    with pytest.raises(DataError, match="pixel values range from -"):
        check_fit(demo_model, open_data(bad_sets["standardised"]), "clean data")


def test_an_allowed_conversion_is_done_and_recorded(demo_model, bad_sets):
    fit = check_fit(demo_model, open_data(bad_sets["grey"]).allow(Conversion(channels=True)), "clean data")
    assert fit.stored == (28, 28, 1) and fit.model == (28, 28, 3)
    assert fit.conversions == ("channels 1 -> 3 (grey repeated)",)
    fit = check_fit(demo_model, open_data(bad_sets["big"]).allow(Conversion(resize=True)), "clean data")
    assert fit.conversions == ("resized 32x32 -> 28x28",)
    # allowing one conversion does not allow the other
    with pytest.raises(DataError, match="channel conversion"):
        check_fit(demo_model, open_data(bad_sets["grey"]).allow(Conversion(resize=True)), "clean data")


def test_the_pairing_decides_scale_and_pixel_range_once(demo_model, bad_sets):
    pairing = pair(demo_model, open_data(bad_sets["good"]), "auto")
    assert pairing.scale == "255" and pairing.pixel_max == 255.0  # the demo divides by 255
    assert pairing.fit.conversions == () and pairing.fit.value_range[1] > 200


def test_streaming_refuses_too_whatever_path_reads_the_data(demo_model, bad_sets):
    """The refusal lives in the data source itself: a code path that forgets check_fit still cannot convert silently."""
    from core.intake.data import load_arrays

    with pytest.raises(DataError, match="28x28x1"):
        load_arrays(open_data(bad_sets["grey"]), demo_model.input_shape)


@pytest.mark.parametrize("case, flag, needle", [
    ("grey", "--channels", "28x28x1"),
    ("big", "--resize", "32x32x3"),
    ("labels", None, "label 10 at index 7"),
    ("standardised", None, "pixel values range"),
])
def test_cli_exits_2_with_one_line_then_converts_when_asked(capsys, demo_bundle, bad_sets, case, flag, needle):
    argv = ["evaluate", "--model", str(demo_bundle.model), "--clean", str(bad_sets[case]), "--json"]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err
    if flag is None:
        return
    assert f"({flag})" in err  # the one line names the flag that allows the conversion
    assert cli.main(argv + [flag]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["conversions"] and result["conversions"][0].startswith("clean data: ")
    assert result["n_clean"] == 60


def test_cli_json_says_no_conversion_when_the_data_fits(capsys, demo_bundle, bad_sets):
    assert cli.main(["evaluate", "--model", str(demo_bundle.model), "--clean", str(bad_sets["good"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["conversions"] == []


def test_gui_data_slot_refuses_then_converts_when_ticked(qtbot, window, demo_bundle, bad_sets):
    window.open_model(str(demo_bundle.model))
    wait_idle(qtbot, window)
    panel = window.panels["ModelPanel"]
    refusals = []
    window.state.data_refused.connect(lambda role, why: refusals.append((role, why)))
    window.open_data("clean_test", str(bad_sets["grey"]))
    wait_idle(qtbot, window)
    assert "clean_test" not in window.state.data
    assert refusals and refusals[0][0] == "clean_test" and "28x28x1" in refusals[0][1]
    assert "refused" in panel.data_labels["clean_test"].text()
    for case, needle in (("labels", "label 10"), ("standardised", "pixel values range")):
        window.open_data("clean_valid", str(bad_sets[case]))
        wait_idle(qtbot, window)
        assert "clean_valid" not in window.state.data and needle in refusals[-1][1]
    panel.convert_box.setChecked(True)
    window.open_data("clean_test", str(bad_sets["big"]))
    wait_idle(qtbot, window)
    assert "clean_test" in window.state.data
    assert "converted: resized 32x32 -&gt; 28x28" in panel.data_labels["clean_test"].text()
    # un-ticking marks the open set as not fitting, and Evaluate has nothing it may run on
    panel.convert_box.setChecked(False)
    assert "does not fit the model" in panel.data_labels["clean_test"].text()
    assert not panel.evaluate_button.isEnabled()
