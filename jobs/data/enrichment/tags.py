"""Tag2Text-style tags: captions parsed into objects, attributes and actions, and their vocabulary.

Tag2Text (ICLR 2024) takes the heads of a caption's noun phrases as objects/scenes, their modifiers
as attributes and its relations as actions, and keeps the tags parsed often enough as its
vocabulary. Without a dependency parser, a noun phrase here is a run of words between stopwords,
punctuation and verbs; its last word is the head and the words before it modify it. A head is an
object when the lexicon says so, or when a determiner or number opened the phrase ("a zebu");
modifiers count only when the lexicon knows them as attributes. Words are folded to their tag form
(plurals to singular, verbs to their base form), so "two red cubes" and "a red cube" agree.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from tipslab.jobs.data.enrichment.lexicon import ACTIONS, ATTRIBUTES, DETERMINERS, IRREGULAR, OBJECTS, STOPWORDS
from tipslab.jobs.data.shards.format import read_manifest
from tipslab.jobs.data.shards.rewrite import iter_rows, rewrite_shards
from tipslab.jobs.storage import join, write_bytes
from tipslab.models.errors import ConfigError

#: The vocabulary's file name beside the shards' manifest when no path is given.
VOCAB_NAME = "tag_vocab.txt"

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+[a-z]*|[^\sa-z\d]")
_MULTI = {tuple(w.split()): w for w in OBJECTS | ACTIONS if " " in w}
_MULTI_LEN = max(len(k) for k in _MULTI)


def _noun(word: str) -> str | None:
    """The word's singular form when the lexicon knows it as an object."""
    for cand in _noun_forms(word):
        if cand in OBJECTS:
            return cand
    return None


def _noun_forms(word: str) -> list[str]:
    if word in IRREGULAR:
        return [IRREGULAR[word]]
    forms = [word]
    if word.endswith("ies") and len(word) > 4:
        forms.append(word[:-3] + "y")
    if word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh", "o")):
        forms.append(word[:-2])
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        forms.append(word[:-1])
    return forms


def _singular(word: str) -> str:
    """Best guess at an unknown noun's singular (the last rule that applies)."""
    return _noun_forms(word)[-1]


def _verb(word: str) -> str | None:
    if word in IRREGULAR and IRREGULAR[word] in ACTIONS:
        return IRREGULAR[word]
    cands = [word]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)]
            cands += [stem, stem + "e"]
            if len(stem) > 2 and stem[-1] == stem[-2]:
                cands.append(stem[:-1])  # sitting -> sit
            if stem.endswith("i"):
                cands.append(stem[:-1] + "y")  # carried -> carry
    if word.endswith("ies"):
        cands.append(word[:-3] + "y")
    if word.endswith("es"):
        cands.append(word[:-2])
    if word.endswith("s"):
        cands.append(word[:-1])
    return next((c for c in cands if c in ACTIONS), None)


def _attribute(word: str) -> str | None:
    word = IRREGULAR.get(word, word)
    return word if word in ATTRIBUTES else None


def _tokens(caption: str) -> list[str]:
    """Lower-case words, digits and punctuation, with the lexicon's multi-word tags joined."""
    words = _TOKEN.findall(caption.lower())
    out, i = [], 0
    while i < len(words):
        for n in range(min(_MULTI_LEN, len(words) - i), 1, -1):
            if tuple(words[i : i + n]) in _MULTI:
                out.append(_MULTI[tuple(words[i : i + n])])
                i += n
                break
        else:
            out.append(words[i])
            i += 1
    return out


def parse_caption(caption: str | None) -> dict[str, list[str]]:
    """{"objects", "attributes", "actions"}: sorted tags parsed from one caption."""
    found = {"objects": set(), "attributes": set(), "actions": set()}
    phrase: list[str] = []
    opened = False  # a determiner or number came right before the phrase

    def close() -> None:
        nonlocal phrase, opened
        if phrase:
            *mods, head = phrase
            noun = _noun(head)
            if noun:
                found["objects"].add(noun)
            elif _attribute(head):
                found["attributes"].add(_attribute(head))
            elif opened and head.isalpha() and len(head) >= 3 and not head.endswith("ly"):
                found["objects"].add(_singular(head))
            for m in mods:
                if _attribute(m):
                    found["attributes"].add(_attribute(m))
        phrase, opened = [], False

    for tok in _tokens(caption or ""):
        if tok in ACTIONS or (tok not in STOPWORDS and not _noun(tok) and _verb(tok)):
            close()
            found["actions"].add(tok if tok in ACTIONS else _verb(tok))
        elif tok in DETERMINERS or tok.isdigit():
            close()
            opened = True
        elif tok in STOPWORDS or not tok[0].isalpha():  # also "3d", "1080p"
            close()
        else:
            phrase.append(tok)
    close()
    return {k: sorted(v) for k, v in found.items()}


def caption_tags(*captions: str | None) -> list[str]:
    """The sorted union of objects, attributes and actions parsed from the captions."""
    tags: set[str] = set()
    for c in captions:
        for group in parse_caption(c).values():
            tags.update(group)
    return sorted(tags)


def build_vocab(tag_lists: Iterable[Iterable[str]], min_freq: int = 1) -> list[str]:
    """Tags met in at least ``min_freq`` rows, most frequent first (ties alphabetical)."""
    if min_freq < 1:
        raise ConfigError(f"min_freq must be >= 1, got {min_freq}")
    counts: Counter[str] = Counter()
    for tags in tag_lists:
        counts.update(set(tags))
    kept = [t for t, n in counts.items() if n >= min_freq]
    return sorted(kept, key=lambda t: (-counts[t], t))


def write_vocab(vocab: list[str], path: str) -> None:
    """One tag per line, the format ``data.tag_vocab`` reads (jobs/config.py read_tag_vocab)."""
    write_bytes(path, "".join(f"{t}\n" for t in vocab).encode())


def tag_shards(shards: str, *, min_freq: int = 1, vocab_path: str | None = None, out: str | None = None) -> dict:
    """Rewrite the shards' ``tags`` from their captions, keeping the vocabulary's tags only.

    Two passes over the captions: one counts the tags (per row), one writes the rows with their
    tags filtered to the vocabulary. The new shard set replaces ``shards`` unless ``out`` is given
    (rewrite.py); the vocabulary goes to ``vocab_path``, by default ``tag_vocab.txt`` beside the
    new shards' manifest.
    """
    captions = ["web_caption", "synthetic_caption"]
    vocab = build_vocab(
        (caption_tags(r["web_caption"], r["synthetic_caption"]) for r in iter_rows(shards, captions)), min_freq
    )
    keep = set(vocab)
    stats = {"rows": 0, "tagged": 0, "tags": 0}

    def rows():
        for row in iter_rows(shards):
            row["tags"] = [t for t in caption_tags(row["web_caption"], row["synthetic_caption"]) if t in keep]
            stats["rows"] += 1
            stats["tagged"] += bool(row["tags"])
            stats["tags"] += len(row["tags"])
            yield row

    source = f"{read_manifest(shards)['source']}+tags:min_freq={min_freq}"
    manifest = rewrite_shards(shards, rows(), source=source, out=out)
    target = out or shards
    vocab_path = vocab_path or join(target, VOCAB_NAME)
    write_vocab(vocab, vocab_path)
    return {
        "shards": target,
        "rows": manifest["num_rows"],
        "vocab": vocab_path,
        "vocab_size": len(vocab),
        "min_freq": min_freq,
        "tagged_fraction": round(stats["tagged"] / max(stats["rows"], 1), 4),
        "mean_tags": round(stats["tags"] / max(stats["rows"], 1), 3),
        "content_hash": manifest["content_hash"],
    }
