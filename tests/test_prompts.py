"""Explicit prompts built in jit equal the tokenizer's ids for the same sentence."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from iedp_jax.prompts import build_prompts, class_prompt_table, present_classes
from iedp_jax.sd import load_tokenizer
from iedp_jax.sd.tiny import write_tiny_backbone

NAMES = ("wall", "floor", "bed", "red square", "painting", "chest of drawers")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(write_tiny_backbone(tmp_path_factory.mktemp("tiny") / "sd"))


def test_present_classes_ignores_255_and_out_of_range():
    labels = np.array([[[0, 2], [255, 2]], [[5, 5], [9, 255]]], np.uint8)
    got = np.asarray(present_classes(labels, 6))
    np.testing.assert_array_equal(got, [[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]])


@pytest.mark.parametrize("length", [77, 12])
def test_prompts_match_tokenizer(tokenizer, length):
    tokenizer.max_length = length
    try:
        table = class_prompt_table(tokenizer, NAMES, "a photo of {}")
        rng = np.random.default_rng(0)
        present = rng.random((16, len(NAMES))) < 0.5
        present[0] = False          # no class at all
        present[1] = True           # every class (overflows the short prompt)
        ids, last = jax.jit(build_prompts)(table, present)
        ids, last = np.asarray(ids), np.asarray(last)
        for b in range(len(present)):
            names = [n for n, p in zip(NAMES, present[b]) if p]
            # The longest prefix of the class list whose prompt fits (eos included).
            for k in range(len(names), -1, -1):
                text = "a photo of " + ", ".join(names[:k])
                if len(tokenizer.encode_words(text)) + 2 <= length:
                    break
            want = tokenizer([text])[0]
            np.testing.assert_array_equal(ids[b], want, err_msg=text)
            spans = tokenizer.token_spans(text, names[:k]) if k else []
            for c, name in enumerate(NAMES):
                if name in names[:k]:
                    assert last[b, c] == spans[names[:k].index(name)][1] - 1
                else:
                    assert last[b, c] == -1
    finally:
        tokenizer.max_length = 77


def test_template_must_end_with_placeholder(tokenizer):
    with pytest.raises(ValueError, match="must end with"):
        class_prompt_table(tokenizer, NAMES, "{} in a photo")
