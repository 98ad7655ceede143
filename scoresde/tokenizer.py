"""A word-level tokenizer over the small fixed vocabulary of the digit-pair prompts (`scoresde.digit_pairs`).

A prompt is lower-cased and split at white space and punctuation ("A 3, on the LEFT." reads as the words
"a 3 on the left"); every word must be in `VOCABULARY`. Token ids are a start token followed by one id per
word, padded to `MAX_LENGTH` with the padding id 0. The empty prompt is the start token alone: it is the null
condition, the prompt a network sees for its unconditional score (classifier-free guidance, Ho & Salimans
2022), and the start token keeps at least one unmasked key in every cross-attention.

Example:
    >>> ids = encode("a 3 on the left and a seven on the right")   # [MAX_LENGTH] int32
    >>> decode(ids)
    'a 3 on the left and a seven on the right'
"""

from __future__ import annotations

import difflib
import re
import string
from typing import Sequence

import numpy as np

PAD, START = "<pad>", "<start>"
DIGITS = tuple(str(d) for d in range(10))
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS = ("a", "an", "and", "at", "digit", "left", "number", "of", "on", "right", "the", "to")
VOCABULARY = (PAD, START) + DIGITS + NUMBER_WORDS + WORDS
VOCAB_SIZE = len(VOCABULARY)
PAD_ID, START_ID = 0, 1
MAX_LENGTH = 16  # the start token and at most 15 words
_IDS = {word: i for i, word in enumerate(VOCABULARY)}
_SEPARATORS = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")
_KNOWN = DIGITS + NUMBER_WORDS + WORDS


def words(prompt: str) -> list[str]:
    """The lower-cased words of a prompt, split at white space and punctuation."""
    return [w for w in _SEPARATORS.split(prompt.lower()) if w]


def _unknown(word: str) -> str:
    near = difflib.get_close_matches(word, _KNOWN, n=3, cutoff=0.6)
    return f"{word!r} (nearest: {', '.join(near)})" if near else f"{word!r} (no near word)"


def encode(prompt: str) -> np.ndarray:
    """Token ids of one prompt: [MAX_LENGTH] int32, the start id, the words' ids, then padding.

    Raises:
      ValueError: naming each word outside the vocabulary with its nearest words, and listing the
        vocabulary; or for a prompt of more than MAX_LENGTH - 1 words.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string; got {prompt!r}.")
    found = words(prompt)
    unknown = [w for w in found if w not in _IDS or w in (PAD, START)]
    if unknown:
        raise ValueError(f"unknown word(s) in prompt {prompt!r}: {'; '.join(map(_unknown, unknown))}; the "
                         f"vocabulary is: {' '.join(_KNOWN)}.")
    if len(found) >= MAX_LENGTH:
        raise ValueError(f"prompt {prompt!r} has {len(found)} words; at most {MAX_LENGTH - 1} are allowed.")
    ids = np.full(MAX_LENGTH, PAD_ID, np.int32)
    ids[0] = START_ID
    ids[1:len(found) + 1] = [_IDS[w] for w in found]
    return ids


def encode_batch(prompts: Sequence[str]) -> np.ndarray:
    """Token ids of several prompts: [N, MAX_LENGTH] int32 (see `encode`)."""
    return np.array([encode(p) for p in prompts], np.int32).reshape(len(prompts), MAX_LENGTH)


def decode(ids: np.ndarray) -> str:
    """The words of token ids [L] (start and padding left out), joined by spaces."""
    return " ".join(VOCABULARY[i] for i in np.asarray(ids).tolist() if i not in (PAD_ID, START_ID))


NULL_PROMPT = encode("")  # [MAX_LENGTH]: the start token alone, the unconditional prompt
