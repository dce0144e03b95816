"""Tokenizers: the hash tokenizer, and SentencePiece trained on scene captions or loaded from a file.

Both: lower-cased input, ids > 0 for text, zero padding, truncation, a state that rebuilds them.
"""

import io
import pickle
import zlib

import numpy as np
import pytest
import sentencepiece

from tipslab.jobs.data.scenes.render import render_scene
from tipslab.models.config import ModelConfig
from tipslab.models.errors import ConfigError
from tipslab.models.tokenizer import (
    HashTokenizer,
    SentencePieceTokenizer,
    build_tokenizer,
    load_sentencepiece,
    tokenizer_from_state,
    train_sentencepiece,
    train_sentencepiece_file,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
        tokenizer_from_state({"kind": "sentencepiece"})  # no model bytes
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_state({"kind": "wordpiece"})


# --- SentencePiece ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captions() -> list[str]:
    """Web and synthetic captions of 200 procedural scenes (400 captions, a few with Title Case)."""
    out = []
    for seed in range(200):
        scene = render_scene(seed, size=28)
        out += [scene["web_caption"], scene["synthetic_caption"]]
    return out


@pytest.fixture(scope="module")
def model(captions) -> bytes:
    return train_sentencepiece(captions, vocab_size=300)


def test_trained_model_has_pad_0_unk_1_and_no_bos_eos(model):
    sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, -1, -1)
    assert sp.id_to_piece(0) == "<pad>" and sp.id_to_piece(1) == "<unk>"
    # vocab_size is an upper bound: these captions have ~100 distinct words
    assert 50 < sp.get_piece_size() <= 300
    assert SentencePieceTokenizer(model, 64).vocab_size == sp.get_piece_size()


def test_vocab_size_caps_the_pieces(captions):
    assert SentencePieceTokenizer(train_sentencepiece(captions, vocab_size=80), 8).vocab_size == 80


def test_round_trip_of_scene_captions(model, captions):
    tok = SentencePieceTokenizer(model, max_len=512)
    rows = tok.encode(captions)
    for caption, row in zip(captions, rows):
        assert tok.decode(row) == caption.lower()
        n = int((row > 0).sum())
        assert (row[:n] > 1).all() and (row[n:] == 0).all()  # no unk, no padding inside, zeros after
    # the learnt vocabulary compresses: fewer pieces than characters, and common words are one piece
    assert (rows > 0).sum() < 0.4 * sum(len(c) for c in captions)
    assert len(tok.token_ids("sphere")) == 1 and len(tok.token_ids("cube")) == 1


def test_input_is_lower_cased_ascii_only_as_the_official_tokenizer(model, captions):
    tok = SentencePieceTokenizer(model, 16)
    assert np.array_equal(tok.encode(["A Small RED Circle"]), tok.encode(["a small red circle"]))
    # tf.strings.lower (the official code) changes ASCII letters only; so do we, in training too
    accents = SentencePieceTokenizer(train_sentencepiece(captions + ["Émile's café", "éa Éb"] * 5, 300), 16)
    assert accents.decode(accents.encode(["Émile É"])[0]) == "Émile É"
    assert accents.token_ids("É") != accents.token_ids("é")


def test_padding_truncation_shape_and_missing_text(model):
    tok = SentencePieceTokenizer(model, max_len=6)
    long = "a small red circle on the left and a large blue square at the bottom right"
    out = tok.encode(["a red sphere", "", None, long])
    assert out.shape == (4, 6) and out.dtype == np.int64
    n = len(SentencePieceTokenizer(model, 64).token_ids("a red sphere"))
    assert 0 < n < 6 and (out[0, :n] > 0).all() and (out[0, n:] == 0).all()
    assert (out[1] == 0).all() and (out[2] == 0).all()
    assert out[3].tolist() == SentencePieceTokenizer(model, 64).token_ids(long)[:6]  # truncated, not dropped
    assert tok.encode([]).shape == (0, 6)


def test_state_carries_the_model_and_round_trips(model, captions):
    tok = SentencePieceTokenizer(model, 12)
    state = tok.state()
    assert state == {"kind": "sentencepiece", "model": model, "max_len": 12}
    for again in (tokenizer_from_state(state), pickle.loads(pickle.dumps(tok))):  # checkpoint; Ray Data
        assert again.kind == "sentencepiece" and again.max_len == 12
        assert np.array_equal(again.encode(captions[:20]), tok.encode(captions[:20]))


def test_file_written_then_loaded_and_built_from_config(tmp_path, captions):
    path = train_sentencepiece_file(iter(captions), tmp_path / "tok" / "tokenizer.model", vocab_size=300)
    assert path == tmp_path / "tok" / "tokenizer.model" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.model"]  # no temporary left
    loaded = load_sentencepiece(path, max_len=10)
    assert loaded.max_len == 10 and loaded.model == path.read_bytes()
    built = build_tokenizer(ModelConfig(tokenizer=str(path), vocab_size=loaded.vocab_size, max_text_len=10))
    as_dict = build_tokenizer({"tokenizer": str(path), "vocab_size": 4096, "max_text_len": 10})
    for tok in (built, as_dict):
        assert np.array_equal(tok.encode(captions[:10]), loaded.encode(captions[:10]))
    hashed = build_tokenizer(ModelConfig(vocab_size=99, max_text_len=7))
    assert isinstance(hashed, HashTokenizer) and (hashed.vocab_size, hashed.max_len) == (99, 7)


def test_config_and_file_errors_name_the_key(tmp_path, model):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(model)
    with pytest.raises(ValueError, match="model.vocab_size"):  # more pieces than embedding rows
        build_tokenizer(ModelConfig(tokenizer=str(path), vocab_size=20))
    with pytest.raises(ConfigError, match="model.tokenizer"):
        build_tokenizer(ModelConfig(tokenizer=str(tmp_path / "missing.model")))
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        load_sentencepiece(tmp_path / "junk.model", 8)


def test_a_model_whose_id_0_is_not_padding_is_rejected(tmp_path, captions):
    # SentencePiece's own defaults put unk at 0: its text could then encode to "padding"
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=out, vocab_size=100, minloglevel=2, num_threads=1
    )
    path = tmp_path / "tokenizer.model"
    path.write_bytes(out.getvalue())
    with pytest.raises(ValueError, match="pad id"):
        load_sentencepiece(path, 8)


def test_training_needs_captions():
    with pytest.raises(ValueError, match="no captions"):
        train_sentencepiece(["", None], vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size=3"):
        train_sentencepiece(["a red circle"] * 10, vocab_size=3)
