"""Tokenizers: the paper's SentencePiece, and a dependency-free hash tokenizer for the skeleton.

Both lower-case their input, add no BOS/EOS, pad with id 0 (the official vocabulary's pad id) and
truncate to `max_len`, behind one `encode(texts) -> [N, max_len] int64` interface. A tokenizer's
`state()` goes into every checkpoint (a SentencePiece model travels as its serialized bytes), so a
checkpoint is evaluated with exactly the tokenizer it was trained with.
"""

import io
import itertools
import os
import re
import string
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError

_WORD = re.compile(r"[a-z0-9]+")
# The official tokenizer lower-cases with tf.strings.lower, which by default changes ASCII letters
# only ("É" stays "É"); we do the same so token ids match the official text tower's.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


class HashTokenizer:
    """Lower-cased words hashed into `vocab_size - 1` buckets (ids 1..vocab_size-1); no training."""

    kind = "hash"

    def __init__(self, vocab_size: int, max_len: int):
        if vocab_size < 2:
            raise ConfigError("vocab_size must be at least 2 (id 0 is padding)")
        self.vocab_size = vocab_size
        self.max_len = max_len

    def token_ids(self, text: str) -> list[int]:
        words = _WORD.findall((text or "").lower())
        return [1 + zlib.crc32(w.encode()) % (self.vocab_size - 1) for w in words][: self.max_len]

    def encode(self, texts) -> np.ndarray:
        """[len(texts), max_len] int64, zero-padded; an empty or missing text is all padding."""
        return _pad([self.token_ids(t) for t in texts], self.max_len)

    def state(self) -> dict:
        """What a checkpoint stores so the same tokenizer can be rebuilt."""
        return {"kind": self.kind, "vocab_size": self.vocab_size, "max_len": self.max_len}


class SentencePieceTokenizer:
    """A SentencePiece model (the paper's tokenizer) used as the official TIPS code uses it.

    ASCII lower-casing, no BOS/EOS, pad id 0, truncation to `max_len`. `model` is the serialized
    model (the bytes of a tokenizer.model file); it is kept so that `state()` can carry it.
    """

    kind = "sentencepiece"

    def __init__(self, model: bytes, max_len: int, source: str = "the SentencePiece model"):
        import sentencepiece

        self.model = bytes(model)
        self.max_len = max_len
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=self.model)
        except RuntimeError as err:
            raise DataError(f"{source}: not a SentencePiece model ({err})") from None
        # Id 0 must never come out of encode(): the text tower takes it for padding.
        if not (self._sp.pad_id() == 0 or self._sp.is_control(0)):
            raise DataError(
                f"{source}: its pad id is {self._sp.pad_id()} and id 0 is {self._sp.id_to_piece(0)!r}, but tipslab "
                "(like the official TIPS tokenizer.model) uses id 0 for padding only; train one with pad id 0 "
                "(`tipslab data tokenizer`, or models.tokenizer.train_sentencepiece_file)"
            )
        self.vocab_size = self._sp.get_piece_size()

    def token_ids(self, text: str) -> list[int]:
        return self._sp.encode(_lower(text), out_type=int)[: self.max_len]

    def encode(self, texts) -> np.ndarray:
        """[len(texts), max_len] int64, zero-padded; an empty or missing text is all padding."""
        ids = self._sp.encode([_lower(t) for t in texts], out_type=int) if len(texts) else []
        return _pad(ids, self.max_len)

    def decode(self, ids) -> str:
        """The (lower-cased) text of one row of ids; padding is dropped."""
        return self._sp.decode([int(i) for i in ids if i != 0])

    def state(self) -> dict:
        return {"kind": self.kind, "model": self.model, "max_len": self.max_len}

    # Ray Data ships the views function (and so its tokenizer) to its workers by pickling.
    def __getstate__(self) -> dict:
        return self.state()

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"], state["max_len"])


def _lower(text: str | None) -> str:
    return (text or "").translate(_ASCII_LOWER)


def _pad(rows: list[list[int]], max_len: int) -> np.ndarray:
    out = np.zeros((len(rows), max_len), dtype=np.int64)
    for i, ids in enumerate(rows):
        ids = ids[:max_len]
        out[i, : len(ids)] = ids
    return out


def train_sentencepiece(
    captions: Iterable[str],
    vocab_size: int,
    *,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    max_sentences: int = 10_000_000,
) -> bytes:
    """A SentencePiece model trained in memory on lower-cased `captions`; its bytes.

    Special ids: pad 0, unk 1, no BOS/EOS. Id 0 = pad is what the official tokenizer.model and the
    text tower rely on; unk at 1 and no BOS/EOS are our choice (the official vocabulary's other
    special ids were not checked; the tokenizer never emits BOS/EOS anyway). `vocab_size` is an
    upper bound: a small corpus (the procedural scenes have ~100 distinct words) gets fewer pieces,
    so read the result's size from `SentencePieceTokenizer(...).vocab_size`. At most
    `max_sentences` captions, sampled uniformly, are used, since training holds them in memory.
    `model_type` (unigram | bpe | char | word) and `character_coverage` are SentencePiece's options.
    On the templated scene captions unigram (its default) keeps some frequent words in pieces
    ("large" -> l|ar|ge) where bpe does not. Coverage 1.0 keeps every character seen; SentencePiece's
    default 0.9995 turns the scenes' rarer digits into unk, but suits large multilingual corpora.
    """
    import sentencepiece

    texts = (_lower(c) for c in captions if c)
    first = next(texts, None)
    if first is None:
        raise DataError("no captions to train a SentencePiece model on")
    out = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=itertools.chain([first], texts),
            model_writer=out,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            hard_vocab_limit=False,
            pad_id=0,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            num_threads=min(16, os.cpu_count() or 1),
            minloglevel=2,
        )
    except RuntimeError as err:
        raise DataError(f"cannot train a SentencePiece model with vocab_size={vocab_size}: {err}") from None
    return out.getvalue()


def train_sentencepiece_file(
    captions: Iterable[str], path: str | os.PathLike, vocab_size: int = 32_000, **options
) -> Path:
    """Train on `captions` and write the model to `path` (a tokenizer.model), atomically.

    At most 32,000 pieces by default, as the paper's vocabulary; `options` go to
    `train_sentencepiece`. Returns the path written.
    """
    model = train_sentencepiece(captions, vocab_size, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(model)
    os.replace(tmp, path)
    return path


def load_sentencepiece(path: str | os.PathLike, max_len: int) -> SentencePieceTokenizer:
    """The tokenizer of a tokenizer.model file: the official TIPS one, or one we trained."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"model.tokenizer: no SentencePiece model at {path}; give the path of a tokenizer.model, or 'hash'"
        )
    return SentencePieceTokenizer(path.read_bytes(), max_len, source=str(path))


def build_tokenizer(model_cfg) -> HashTokenizer | SentencePieceTokenizer:
    """The tokenizer that `model.tokenizer` names ("hash" or a tokenizer.model path).

    `model_cfg` is a ModelConfig or the `model` mapping of an experiment config. A SentencePiece
    vocabulary larger than `model.vocab_size` (the text tower's embedding rows) is rejected.
    """
    get = model_cfg.get if isinstance(model_cfg, Mapping) else lambda key, default: getattr(model_cfg, key, default)
    name, vocab_size, max_len = get("tokenizer", "hash"), get("vocab_size", 4096), get("max_text_len", 64)
    if name == "hash":
        return HashTokenizer(vocab_size, max_len)
    tokenizer = load_sentencepiece(name, max_len)
    if tokenizer.vocab_size > vocab_size:
        raise ConfigError(
            f"model.tokenizer: {name} has {tokenizer.vocab_size} pieces but model.vocab_size is "
            f"{vocab_size}; set model.vocab_size: {tokenizer.vocab_size} (or more)"
        )
    return tokenizer


def tokenizer_from_state(state: dict) -> HashTokenizer | SentencePieceTokenizer:
    """The tokenizer a checkpoint was trained with, from its `state()`."""
    kind = state.get("kind")
    if kind == "hash":
        return HashTokenizer(state["vocab_size"], state["max_len"])
    if kind == "sentencepiece":
        if not isinstance(state.get("model"), (bytes, bytearray)) or "max_len" not in state:
            raise DataError("sentencepiece tokenizer state lacks its serialized 'model' bytes or 'max_len'")
        return SentencePieceTokenizer(state["model"], state["max_len"], source="the checkpoint's tokenizer")
    raise ConfigError(f"unknown tokenizer kind {kind!r}; known: 'hash', 'sentencepiece'")
