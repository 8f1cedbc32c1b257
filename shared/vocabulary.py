"""Caption vocabulary: lower-cased words without punctuation, kept above a minimum count.

Words are what scoring compares, so they follow what pycocoevalcap's PTB tokenizer (Stanford
CoreNLP, run over the references and the generated captions) leaves of a caption:

- letters of every script are kept and lower-cased: "Café" -> "café", "ZÜRICH" -> "zürich"
  (the PTB tokenizer keeps them; an ASCII-only filter would score "caf" against "café");
- text is NFC-normalised first, so a decomposed "e" + U+0301 is the same word as "é"
  (`evaluate.references` normalises the references the same way);
- a word is a maximal run of letters, digits and combining marks; CJK characters are letters,
  and a run of them without spaces stays ONE word, as the PTB tokenizer leaves it: CJK
  captions must come word-segmented (spaces between words, e.g. the Karpathy json's tokens)
  for both the vocabulary and the metrics to see words;
- everything else separates words and is dropped. Known differences from the PTB tokens,
  all on punctuation: "dog's" gives "dog" "s" here, "dog" "'s" there; PTB keeps non-ASCII
  punctuation ("。", "¿") and splits "x²" into "x" "²".
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.atomic_files import write_text_atomic

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
_WORD_CATEGORIES = ("L", "N", "M")  # Unicode letters, digits/numbers, combining marks
_ASCII_NON_WORD = re.compile(r"[^a-z0-9]+")  # the same rule for ASCII text, fast


def _is_word_char(char: str) -> bool:
    return unicodedata.category(char)[0] in _WORD_CATEGORIES


def normalize_text(text: str) -> str:
    """NFC, lower-case: the form captions are compared in (vocabulary and references)."""
    return unicodedata.normalize("NFC", text).lower()


def normalize_words(words: Iterable[str]) -> list[str]:
    """NFC, lower-case, split at anything but letters/digits/marks, drop empties: the field's
    caption normalisation, for every script (see the module docstring)."""
    out: list[str] = []
    for word in words:
        if word.isascii():
            out.extend(_ASCII_NON_WORD.sub(" ", word.lower()).split())
            continue
        text = normalize_text(word)
        out.extend("".join(c if _is_word_char(c) else " " for c in text).split())
    return out


def tokenize(text: str) -> list[str]:
    """Words of a raw caption, normalised like the vocabulary."""
    return normalize_words(text.split())


@dataclass
class Vocabulary:
    """Word <-> id mapping; ids 0-3 are <pad>, <bos>, <eos>, <unk>."""

    words: list[str]

    def __post_init__(self) -> None:
        if tuple(self.words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        self.index = {w: i for i, w in enumerate(self.words)}

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: Sequence[str], max_words: int | None = None) -> list[int]:
        """`<bos> w1 .. wn <eos>` ids; unknown words map to <unk>; truncated to `max_words`."""
        words = normalize_words(words)[:max_words]
        return [self.bos_id, *(self.index.get(w, self.unk_id) for w in words), self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first <eos>, specials dropped."""
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i >= len(SPECIALS):
                out.append(self.words[i])
        return " ".join(out)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps({"words": self.words}, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        try:
            return cls(json.loads(Path(path).read_text())["words"])
        except FileNotFoundError:
            raise FileNotFoundError(f"vocabulary not found: {path}") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a vocabulary file ({err})") from None


def word_counts(token_lists: Iterable[Sequence[str]]) -> Counter[str]:
    """Counts of normalised words over tokenised captions."""
    counts: Counter[str] = Counter()
    for tokens in token_lists:
        counts.update(normalize_words(tokens))
    return counts


def build_vocabulary(token_lists: Iterable[Sequence[str]], min_count: int) -> Vocabulary:
    """Words seen at least `min_count` times, most frequent first (ties alphabetical)."""
    counts = word_counts(token_lists)
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return Vocabulary([*SPECIALS, *kept])
