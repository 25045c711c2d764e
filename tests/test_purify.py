"""Purification (issue 25): the inpainting fill, what flagged inputs share, and the rule, on hand-built images and models.

The rule is tested with a hand-written "model" and "reference networks" (functions of the pixels) so that every
branch has an expectation worked out by hand; the real demo BadNet is purified in tests/test_purify_cli.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from core.repair import purify

SIDE = 12
TARGET = 7
STICKER = (slice(9, 11), slice(9, 11))  # the trigger's 2x2 pixels, bottom-right


# ------------------------------------------------------------------ the fill


def stroke_image(channels: int = 1) -> np.ndarray:
    """28x28 black, a 3-px white vertical stroke (cols 13-15), and a grey 4x4 sticker at rows/cols 20-23."""
    img = np.zeros((28, 28, channels), np.float32)
    img[:, 13:16] = 255.0
    img[20:24, 20:24] = 200.0
    return img


@pytest.mark.parametrize("fill", purify.FILLS)
@pytest.mark.parametrize("channels", [1, 3])
def test_inpainting_fills_a_sticker_with_its_black_surroundings_and_touches_nothing_else(fill, channels):
    img = stroke_image(channels)
    region = np.zeros((28, 28), bool)
    region[20:24, 20:24] = True
    out = purify.inpaint(img, region, fill)
    assert out.shape == img.shape and out.dtype == np.float32
    assert np.all(out[region] == 0.0)  # the sticker's neighbourhood (radius 3) is black: so is the fill
    assert np.array_equal(out[~region], img[~region])  # not one pixel outside the hole changes


@pytest.mark.parametrize("fill", purify.FILLS)
def test_inpainting_carries_a_stroke_across_the_hole_that_cuts_it(fill):
    img = stroke_image()
    hole = np.zeros((28, 28), bool)
    hole[10:13, 11:18] = True  # 3 rows across the stroke and 2 px of black on each side
    out = purify.inpaint(img, hole, fill)[..., 0]
    stroke, sides = out[10:13, 13:16].mean(), np.r_[out[10:13, 11], out[10:13, 17]].mean()
    assert stroke > 128 and sides < 64 and stroke > 2 * sides  # light where the stroke continues, dark beside it


def test_inpainting_keeps_the_image_units_and_grey_levels():
    grey = np.full((16, 16, 3), 100.0 / 255.0, np.float32)  # stored as 0..1
    grey[4:8, 4:8] = 1.0
    region = np.zeros((16, 16), bool)
    region[4:8, 4:8] = True
    for fill in purify.FILLS:
        out = purify.inpaint(grey, region, fill, pixel_max=1.0)
        np.testing.assert_allclose(out[region], 100.0 / 255.0, atol=2.5 / 255.0)  # the grey round the hole (OpenCV rounds), 0..1 units


def test_widen_adds_a_margin_of_eight_connected_pixels():
    one = np.zeros((7, 7), bool)
    one[3, 3] = True
    assert purify.widen(one, 0).sum() == 1 and purify.widen(one, 1).sum() == 9 and purify.widen(one, 2).sum() == 25


# ------------------------------------------------------------ what the flagged inputs share


def digits(n: int, rng: np.random.Generator) -> np.ndarray:
    """Black images with a random white blob in the middle (each different), like MNIST digits."""
    x = np.zeros((n, SIDE, SIDE, 1), np.float32)
    for i in range(n):
        r, c = rng.integers(2, 6, size=2)
        x[i, r : r + 4, c : c + 3] = rng.integers(150, 256)
    return x


def test_the_shared_trigger_is_the_stickers_pixels_that_clean_images_lack():
    rng = np.random.default_rng(0)
    clean = digits(50, rng)
    flagged = digits(24, rng)
    flagged[:18, 9, 9] = flagged[:18, 10, 10] = 255.0  # a checkerboard sticker (two white cells, two black) on 18 of 24 (75%)
    found = purify.shared_triggers(flagged, np.full(24, TARGET), clean)
    expected = np.zeros((SIDE, SIDE), bool)
    expected[9, 9] = expected[10, 10] = True  # the black cells are what clean images have there: not the trigger
    assert set(found) == {TARGET} and np.array_equal(found[TARGET].region, expected)
    assert found[TARGET].n == 24 and not found[TARGET].image_wide
    flagged[:8, 9, 9] = 0.0  # now 16 of 24 (67%) carry that cell: below the share, it is not read as the trigger's
    assert purify.shared_triggers(flagged, np.full(24, TARGET), clean)[TARGET].region.sum() == 1


def test_clean_images_share_no_trigger_and_few_inputs_say_nothing():
    rng = np.random.default_rng(1)
    clean = digits(50, rng)
    assert purify.shared_triggers(digits(40, rng), np.full(40, 3), clean) == {}
    stamped = digits(19, rng)
    stamped[:, 9, 9] = 255.0
    assert purify.shared_triggers(stamped, np.full(19, TARGET), clean) == {}  # below MIN_SHARED inputs
    assert purify.shared_triggers(stamped, np.full(19, TARGET), clean, min_inputs=19)[TARGET].region.sum() == 1


def test_a_blended_pattern_is_shared_everywhere_so_it_is_image_wide():
    rng = np.random.default_rng(2)
    clean = digits(50, rng)
    pattern = rng.uniform(0, 255, (SIDE, SIDE, 1)).astype(np.float32)
    blended = np.rint(0.85 * digits(25, rng) + 0.15 * pattern)
    found = purify.shared_triggers(blended, np.full(25, TARGET), clean)
    assert found[TARGET].image_wide and found[TARGET].region.mean() > purify.IMAGE_WIDE


# ------------------------------------------------------------------ the rule


def content(x: np.ndarray) -> np.ndarray:
    """The class a hand-drawn image shows: the brightness of its top-left 3x3 block, in tenths of 255."""
    return np.clip(np.rint(x[:, :3, :3, 0].mean(axis=(1, 2)) / 25.5), 0, 9).astype(int)


def one_hot(classes: np.ndarray, sure: float = 0.9) -> np.ndarray:
    p = np.full((len(classes), 10), (1 - sure) / 9)
    p[np.arange(len(classes)), classes] = sure
    return p


def sticker_model(_loaded: object, x_scaled: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """A BadNet by hand: the sticker (mean of its pixels above 128) sends any image to TARGET; else the content."""
    x = np.asarray(x_scaled) * 255.0  # the rule scales by 1/255 ("255")
    stamped = x[:, STICKER[0], STICKER[1], 0].mean(axis=(1, 2)) > 128
    return one_hot(np.where(stamped, TARGET, content(x)))


def blend_model(_loaded: object, x_scaled: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """A BadNet whose trigger covers the image: a background raised above 20 everywhere sends it to TARGET."""
    x = np.asarray(x_scaled) * 255.0
    return one_hot(np.where(x.min(axis=(1, 2, 3)) > 20, TARGET, content(x)))


def image(cls: int, sticker: bool = False, background: float = 0.0) -> np.ndarray:
    img = np.full((SIDE, SIDE, 1), background, np.float32)
    img[:3, :3] = cls * 25.5
    if sticker:
        img[STICKER] = 255.0
    return img


@pytest.fixture
def rule(monkeypatch):
    """Patch the model and the reference networks; ``twins(fn)`` sets what the references answer (classes per image)."""
    state = {"twins": lambda x: content(x)}

    def references(nets, x_scaled):
        x = np.asarray(x_scaled) * 255.0
        answers = [np.asarray(state["twins"](x)) for _ in nets]
        return np.stack([one_hot(a if a.ndim == 1 else a[:, k]) for k, a in enumerate(answers)])

    monkeypatch.setattr(purify.reference, "probabilities", references)
    loaded = SimpleNamespace(num_classes=10, input_shape=(SIDE, SIDE, 1))

    def run(model, images, twins=True, regions=True, answer=None):
        monkeypatch.setattr(purify, "predict_proba", model)
        if answer is not None:
            state["twins"] = answer
        sticker = np.zeros((SIDE, SIDE), bool)
        sticker[STICKER] = True
        ev = purify.Evidence("255", 10, (SIDE, SIDE, 1), regions={TARGET: sticker} if regions else {},
                             twins=[object()] * 5 if twins else [], targets=(TARGET,))
        return purify.purify_images(loaded, np.stack(images), ev, purify.PurifySettings(margin=0))

    return run


def test_the_filled_trigger_gives_the_content_when_the_clean_references_agree(rule):
    out = rule(sticker_model, [image(3, sticker=True), image(5, sticker=True)])
    assert [p.purified_label for p in out] == [3, 5] and {p.method for p in out} == {purify.TRIGGER}
    assert out[0].label == TARGET and out[0].mask.sum() == 4 and out[0].after[STICKER].max() == 0.0
    assert np.array_equal(out[0].before, image(3, sticker=True)) and "5 of 5 clean reference networks agree" in out[0].reason


def test_a_fill_the_clean_references_contradict_is_not_accepted_nor_replaced_by_their_answer(rule):
    out = rule(sticker_model, [image(3, sticker=True)], answer=lambda x: np.full(len(x), 4))
    assert out[0].method == purify.CANNOT and out[0].purified_label is None  # two sources disagree: no answer
    assert "the evidence disagrees" in out[0].reason and "gives 3, but the clean reference networks answer 4 (5 of 5)" in out[0].reason


def test_split_references_leave_a_contradicted_fill_unpurified(rule):
    split = lambda x: np.stack([np.full(len(x), k % 3) for k in range(5)], axis=1)  # noqa: E731 (votes 2, 2, 1)
    out = rule(sticker_model, [image(3, sticker=True)], answer=split)
    assert out[0].purified_label is None and out[0].method == purify.CANNOT and out[0].reason.startswith("cannot purify")
    assert out[0].guarded(10) == 10  # the guarded classifier falls back to the reject class


def test_without_references_the_two_fills_agreeing_is_enough(rule):
    out = rule(sticker_model, [image(6, sticker=True)], twins=False)
    assert out[0].purified_label == 6 and "no clean reference networks to ask" in out[0].reason


def test_a_flagged_clean_image_the_references_confirm_is_kept(rule):
    out = rule(sticker_model, [image(TARGET), image(2)])
    assert [p.method for p in out] == [purify.KEPT, purify.KEPT] and [p.purified_label for p in out] == [TARGET, 2]
    assert out[0].reason.startswith("all 5 clean reference networks also answer 7") and out[0].mask is None  # nothing cut out


def test_a_clean_image_of_the_target_most_references_back_is_kept_once_its_trigger_region_changes_nothing(rule):
    three_of_five = lambda x: np.stack([content(x) if k < 3 else np.full(len(x), 1) for k in range(5)], axis=1)  # noqa: E731
    out = rule(sticker_model, [image(TARGET)], answer=three_of_five)
    assert out[0].method == purify.KEPT and out[0].purified_label == TARGET
    assert "3 of 5 clean reference networks also answer 7" in out[0].reason and "leaves the answer 7" in out[0].reason


def test_an_answer_no_backdoor_points_to_is_kept_even_when_the_references_split(rule):
    split = lambda x: np.stack([np.full(len(x), k % 3) for k in range(5)], axis=1)  # noqa: E731 (votes 2, 2, 1)
    out = rule(sticker_model, [image(4), image(TARGET)], answer=split)
    assert out[0].method == purify.KEPT and out[0].purified_label == 4 and "4 is not a suspected class" in out[0].reason
    assert out[1].method == purify.CANNOT  # 7 is the verdict's target: the split references cannot vouch for it


def test_an_image_wide_trigger_cannot_be_purified_without_references(rule):
    blended = [image(3, background=40.0), image(8, background=40.0)]
    out = rule(blend_model, blended, twins=False)
    assert all(p.purified_label is None and p.method == purify.CANNOT for p in out)
    assert "leaves the answer 7" in out[0].reason and "no clean reference networks" in out[0].reason


def test_an_image_wide_trigger_gets_the_clean_references_answer(rule):
    out = rule(blend_model, [image(3, background=40.0), image(8, background=40.0)])
    assert [p.purified_label for p in out] == [3, 8] and {p.method for p in out} == {purify.REFERENCE}
    assert out[0].mask is None and out[0].after is None  # nothing was cut out


def test_the_references_alone_answer_only_when_every_one_of_them_agrees(rule):
    four_of_five = lambda x: np.stack([content(x) if k else np.full(len(x), 1) for k in range(5)], axis=1)  # noqa: E731
    out = rule(blend_model, [image(3, background=40.0)], answer=four_of_five)
    assert out[0].method == purify.CANNOT and "only 4 of 5 answer 3" in out[0].reason


def test_salient_boxes_are_tried_when_no_trigger_region_explains_the_answer(rule, monkeypatch):
    asked = []

    def locate(x, classes, rank):
        asked.append((list(classes), rank))
        boxes = [(0, 0, 3, 3), (9, 9, 11, 11)]  # the content first (refused: nothing agrees), then the sticker
        return None if rank >= len(boxes) else [[boxes[rank]] for _ in x]

    monkeypatch.setattr(purify, "predict_proba", sticker_model)
    ev = purify.Evidence("255", 10, (SIDE, SIDE, 1), twins=[object()] * 5, locate=locate, targets=(TARGET,))
    out = purify.purify_images(SimpleNamespace(num_classes=10), np.stack([image(4, sticker=True), image(2)]), ev,
                               purify.PurifySettings(margin=0))
    assert asked == [([TARGET], 0), ([TARGET], 1)]  # the image sent to 2 (confirmed by the references) is kept, not searched
    assert out[0].method == purify.BOX and out[0].purified_label == 4 and out[0].mask[9:11, 9:11].all()
    assert out[1].method == purify.KEPT


def test_a_salient_box_over_a_tenth_of_the_image_is_not_cut_out(rule, monkeypatch):
    monkeypatch.setattr(purify, "predict_proba", sticker_model)
    ev = purify.Evidence("255", 10, (SIDE, SIDE, 1), twins=[object()] * 5,
                         locate=lambda x, c, rank: None if rank else [[(4, 4, 12, 12)] for _ in x],
                         targets=(TARGET,))  # 64 px of 144: it would remove the sticker, and anything else there
    out = purify.purify_images(SimpleNamespace(num_classes=10), image(4, sticker=True)[None], ev, purify.PurifySettings(margin=0))
    assert out[0].method != purify.BOX and "a salient box of 64 px is too large to be a trigger" in out[0].reason


def test_settings_refuse_unknown_fills():
    from core.errors import DataError

    with pytest.raises(DataError, match="fills"):
        purify.PurifySettings(fills=("blur",))


def test_references_fooled_by_the_shared_trigger_do_not_keep_the_target(rule, monkeypatch):
    """A blended pattern the references read as the target: an input that carries the trigger the flagged inputs sent
    to the target share is never kept; a clean image of the target, which does not carry it, still is."""
    rng = np.random.default_rng(3)
    pattern = rng.uniform(60, 255, (SIDE, SIDE, 1)).astype(np.float32)
    # a faint pattern over the whole image, never below 21: what the blend model's trigger is
    blended = np.stack([np.maximum(np.rint(0.85 * image(k % 10) + 0.15 * pattern), 21.0) for k in range(25)])
    monkeypatch.setattr(purify, "predict_proba", blend_model)
    fooled = lambda x: np.where(x.min(axis=(1, 2, 3)) > 20, TARGET, content(x))  # noqa: E731 (the noise reads as 7)
    rule(blend_model, [image(1)], answer=fooled)  # installs the fooled references
    shared = purify.shared_triggers(blended, np.full(25, TARGET), np.stack([image(k % 10) for k in range(30)]))
    assert shared[TARGET].image_wide
    ev = purify.Evidence("255", 10, (SIDE, SIDE, 1), twins=[object()] * 5, shared=shared, targets=(TARGET,))
    out = purify.purify_images(SimpleNamespace(num_classes=10), np.stack([blended[3], image(TARGET)]), ev)
    assert out[0].method == purify.CANNOT and "carries the trigger the 25 flagged inputs sent to 7 share" in out[0].reason
    assert out[1].method == purify.KEPT and out[1].purified_label == TARGET


def test_without_a_verdict_a_shared_trigger_names_the_suspected_class(rule, monkeypatch):
    monkeypatch.setattr(purify, "predict_proba", sticker_model)
    stamped = np.stack([image(k % 7, sticker=True) for k in range(25)])
    shared = purify.shared_triggers(stamped, np.full(25, TARGET), np.stack([image(k % 10) for k in range(30)]))
    ev = purify.Evidence("255", 10, (SIDE, SIDE, 1), shared=shared)  # no verdict target, no references
    assert ev.suspect(TARGET) and not ev.suspect(4)
    out = purify.purify_images(SimpleNamespace(num_classes=10), np.stack([image(4), stamped[2]]), ev, purify.PurifySettings(margin=0))
    assert out[0].method == purify.KEPT and "4 is not a suspected class" in out[0].reason
    assert out[1].method == purify.SHARED and out[1].purified_label == 2
    assert purify.Evidence("255", 10, (SIDE, SIDE, 1)).suspect(4)  # with no evidence at all, every class is suspected
