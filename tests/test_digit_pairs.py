"""Tests for scoresde/tokenizer.py and the digit-pair prompt data set (scoresde/digit_pairs.py, data.py).

The prompts are parsed back into digits by `_parse` below, written from the English of the prompts and not
from the generator's templates: a number word or numeral is a digit, and the first "left" or "right" after
it (before the next digit) says where it goes; a digit followed by neither goes to the other side.
"""

import numpy as np
import pytest

from scoresde import digit_pairs, tokenizer
from scoresde.data import DataConfig, build_dataset

CONFIG = DataConfig(dataset="digit_pairs", num_train=3000, num_test=500, seed=3)
NUMBERS = {**{str(d): d for d in range(10)},
           **{w: d for d, w in enumerate("zero one two three four five six seven eight nine".split())}}


def _parse(text):
    """(left, right) digits of a prompt's words."""
    words = text.split()
    places, digits = [], []
    for i, word in enumerate(words):
        if word in NUMBERS:
            digits.append(NUMBERS[word])
            places.append(None)
        elif word in ("left", "right") and digits and places[-1] is None:
            places[-1] = word
    assert len(digits) == 2, text
    if places[0] is None:
        places[0] = {"left": "right", "right": "left"}[places[1]]
    if places[1] is None:
        places[1] = {"left": "right", "right": "left"}[places[0]]
    assert sorted(places) == ["left", "right"], text
    return tuple(digits) if places[0] == "left" else tuple(digits[::-1])


@pytest.fixture(scope="module")
def pairs():
    return build_dataset(CONFIG)


# ----- tokenizer (pure Python, fast) -----


def test_tokenizer_round_trips_and_handles_case_and_punctuation():
    ids = tokenizer.encode("A 3, on the LEFT; and a Seven on the right!")
    assert ids.shape == (tokenizer.MAX_LENGTH,) and ids.dtype == np.int32
    assert ids[0] == tokenizer.START_ID and (ids[12:] == tokenizer.PAD_ID).all() and (ids[1:12] > 1).all()
    assert tokenizer.decode(ids) == "a 3 on the left and a seven on the right"
    assert tokenizer.decode(tokenizer.encode("  ")) == ""
    np.testing.assert_array_equal(tokenizer.encode(""), tokenizer.NULL_PROMPT)
    assert list(tokenizer.NULL_PROMPT[:2]) == [tokenizer.START_ID, tokenizer.PAD_ID]


def test_unknown_words_name_the_nearest_words_and_the_vocabulary():
    with pytest.raises(ValueError) as error:
        tokenizer.encode("a sevn on the left and a 3 on the rigth of the dog")
    message = str(error.value)
    assert "\n" not in message
    assert "'sevn' (nearest: seven" in message and "'rigth' (nearest: right" in message
    assert "'dog' (no near word)" in message
    assert "vocabulary is: 0 1 2 3 4 5 6 7 8 9 zero one" in message and "<pad>" not in message


def test_special_tokens_long_prompts_and_non_strings_are_refused():
    for bad in ("<pad>", "<start> 3"):
        with pytest.raises(ValueError, match="unknown word"):
            tokenizer.encode(bad)
    with pytest.raises(ValueError, match="16 words; at most 15"):
        tokenizer.encode(" ".join(["3"] * 16))
    tokenizer.encode(" ".join(["3"] * 15))
    with pytest.raises(ValueError, match="must be a string"):
        tokenizer.encode(3)


def test_generated_prompts_parse_back_to_their_digits():
    rng = np.random.default_rng(0)
    shapes = set()
    for left, right in digit_pairs.ALL_PAIRS * 5:
        text = digit_pairs.prompt(left, right, rng)
        assert _parse(tokenizer.decode(tokenizer.encode(text))) == (left, right), text
        shapes.add(" ".join("N" if w in NUMBERS else w for w in tokenizer.words(text)))
    # Wordings vary: the right digit mentioned first, numerals and words, "a"/"an", "the digit", "of".
    words = {w for shape in shapes for w in shape.split()}
    assert {"a", "an", "digit", "number", "of", "at"} <= words
    assert any(s.startswith("N on the right") for s in shapes) and len(shapes) > 50


def test_held_out_pairs_are_ten_with_every_digit_once_per_side_and_seen_swaps():
    held = digit_pairs.HELD_OUT_PAIRS
    assert len(set(held)) == 10 and all(a != b for a, b in held)
    assert sorted(a for a, _ in held) == list(range(10)) == sorted(b for _, b in held)
    assert not {(b, a) for a, b in held} & set(held)
    assert set(digit_pairs.SEEN_PAIRS) == set(digit_pairs.ALL_PAIRS) - set(held)


# ----- the data set (builds digits: slow) -----


@pytest.mark.slow
def test_canvases_are_deterministic_and_depend_on_the_seed(pairs):
    again = build_dataset(CONFIG)
    for name in ("train", "test", "train_labels", "test_labels", "train_cond", "test_cond"):
        np.testing.assert_array_equal(getattr(pairs, name), getattr(again, name))
    other = build_dataset(DataConfig(dataset="digit_pairs", num_train=3000, num_test=500, seed=4))
    assert not np.array_equal(pairs.train_cond, other.train_cond)


@pytest.mark.slow
def test_batches_serve_canvases_and_padded_token_ids(pairs):
    batch = pairs.batch(5, 64)
    rows = pairs.batch_indices(5, 64)
    assert batch.x.shape == (64, 8, 16, 1) and batch.cond.shape == (64, tokenizer.MAX_LENGTH)
    assert batch.cond.dtype == np.int32
    np.testing.assert_array_equal(batch.cond, pairs.train_cond[rows])
    assert pairs.train_labels.shape == (3000, 2) and pairs.test_cond.shape == (500, tokenizer.MAX_LENGTH)


@pytest.mark.slow
def test_held_out_pairs_never_appear_in_training_and_test_covers_all_pairs(pairs):
    train = set(map(tuple, pairs.train_labels.tolist()))
    assert train == set(digit_pairs.SEEN_PAIRS)
    assert set(map(tuple, pairs.test_labels.tolist())) == set(digit_pairs.ALL_PAIRS)
    parsed = {_parse(tokenizer.decode(ids)) for ids in pairs.train_cond}
    assert not parsed & set(digit_pairs.HELD_OUT_PAIRS)


@pytest.mark.slow
def test_prompts_name_the_digits_drawn_and_the_halves_are_those_digits(pairs):
    digits = build_dataset(DataConfig(dataset="digits", seed=3))
    for split in ("train", "test"):
        canvases, labels, cond = (getattr(pairs, split), getattr(pairs, f"{split}_labels"),
                                  getattr(pairs, f"{split}_cond"))
        assert [_parse(tokenizer.decode(ids)) for ids in cond] == list(map(tuple, labels.tolist()))
        # Each half is an image of its split's digits with the stated label (train and test digits differ).
        images = {img.tobytes(): int(y) for img, y in zip(getattr(digits, split),
                                                           getattr(digits, f"{split}_labels"))}
        for side, columns in enumerate((slice(0, 8), slice(8, 16))):
            halves = np.ascontiguousarray(canvases[:, :, columns])
            assert [images.get(h.tobytes()) for h in halves] == labels[:, side].tolist()
