"""The hash tokenizer: lower-cased words hashed to ids in [1, vocab), zero padding, truncation."""
import zlib

import numpy as np
import pytest

from tipslab.models.tokenizer import HashTokenizer, tokenizer_from_state


def test_ids_are_crc32_buckets_of_lowercased_words():
    tok = HashTokenizer(vocab_size=100, max_len=8)
    expected = [1 + zlib.crc32(w.encode()) % 99 for w in ("a", "red", "cube", "2")]
    assert tok.token_ids("A red CUBE, 2!") == expected


def test_lower_casing_and_punctuation_do_not_change_ids():
    tok = HashTokenizer(4096, 16)
    a = tok.encode(["A Red Cube on the TABLE."])
    b = tok.encode(["a red cube   on the table"])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, tok.encode(["a blue cube on the table"]))


def test_deterministic_across_instances_and_calls():
    texts = ["two spheres and a cone", "a photo of a dog", ""]
    a = HashTokenizer(4096, 12).encode(texts)
    b = HashTokenizer(4096, 12).encode(texts)
    assert np.array_equal(a, b)
    assert np.array_equal(a, HashTokenizer(4096, 12).encode(texts))


def test_padding_with_zero_and_shape():
    tok = HashTokenizer(4096, 10)
    out = tok.encode(["one two three", "", None, "x"])
    assert out.shape == (4, 10) and out.dtype == np.int64
    assert (out[0, :3] > 0).all() and (out[0, 3:] == 0).all()
    assert (out[1] == 0).all() and (out[2] == 0).all()  # empty and missing captions are all padding
    assert out[3, 0] > 0 and (out[3, 1:] == 0).all()


def test_truncation_to_max_len():
    tok = HashTokenizer(4096, 5)
    words = [f"w{i}" for i in range(9)]
    out = tok.encode([" ".join(words)])
    assert out.shape == (1, 5) and (out > 0).all()
    assert out[0].tolist() == HashTokenizer(4096, 64).token_ids(" ".join(words))[:5]


@pytest.mark.parametrize("vocab", [2, 3, 50, 4096])
def test_ids_in_range(vocab):
    tok = HashTokenizer(vocab, 64)
    text = " ".join(f"word{i}" for i in range(64))
    ids = np.array(tok.token_ids(text))
    assert len(ids) == 64
    assert ids.min() >= 1 and ids.max() < vocab
    if vocab == 2:
        assert (ids == 1).all()


def test_vocab_too_small_is_rejected():
    with pytest.raises(ValueError):
        HashTokenizer(1, 8)


def test_state_round_trip():
    tok = HashTokenizer(777, 13)
    state = tok.state()
    assert state == {"kind": "hash", "vocab_size": 777, "max_len": 13}
    again = tokenizer_from_state(state)
    texts = ["some caption here", "another"]
    assert np.array_equal(again.encode(texts), tok.encode(texts))
    with pytest.raises(ValueError, match="sentencepiece"):
        tokenizer_from_state({"kind": "sentencepiece"})
