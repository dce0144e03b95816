"""A dependency-free tokenizer for the walking skeleton.

Lower-cased words hashed into a fixed number of buckets (id 0 is padding, as in the official
SentencePiece vocabulary). It needs no training and no download; the SentencePiece tokenizer of the
paper replaces it behind the same `encode` interface.
"""
import re
import zlib

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


class HashTokenizer:
    kind = "hash"

    def __init__(self, vocab_size: int, max_len: int):
        if vocab_size < 2:
            raise ValueError("vocab_size must be at least 2 (id 0 is padding)")
        self.vocab_size = vocab_size
        self.max_len = max_len

    def token_ids(self, text: str) -> list[int]:
        words = _WORD.findall((text or "").lower())
        return [1 + zlib.crc32(w.encode()) % (self.vocab_size - 1) for w in words][: self.max_len]

    def encode(self, texts) -> np.ndarray:
        """[len(texts), max_len] int64, zero-padded; an empty or missing text is all padding."""
        out = np.zeros((len(texts), self.max_len), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = self.token_ids(text)
            out[i, : len(ids)] = ids
        return out

    def state(self) -> dict:
        """What a checkpoint stores so the same tokenizer can be rebuilt."""
        return {"kind": self.kind, "vocab_size": self.vocab_size, "max_len": self.max_len}


def tokenizer_from_state(state: dict) -> HashTokenizer:
    if state.get("kind") != "hash":
        raise ValueError(f"unknown tokenizer kind {state.get('kind')!r}")
    return HashTokenizer(state["vocab_size"], state["max_len"])
