"""Caption words as the original CHAIR code sees them: NLTK tokens, singularised by Pattern 2.6.

The reference CHAIR implementation (Rohrbach et al. 2018, `utils/chair.py` of
LisaAnne/Hallucination, Python 2) lower-cases a caption, splits it with `nltk.word_tokenize`
and singularises every token with `pattern.en.singularize` of Pattern 2.6 (2013). Pattern no
longer installs on current Pythons; TextBlob ships the same inflection module with a few later
fixes. `singular` rebuilds Pattern 2.6's function on TextBlob's tables, undoing those fixes, so
it returns 2.6's result *including its quirks*, which decide what the original counts:

    "bus" -> "bu"      (only "buses" -> "bus" reaches the synonym table: a lone "bus" is
                        never a mention in the original CHAIR)
    "glass" -> "glas"  (why the original maps "wine glas" to "wine glass")
    "ties" -> "ty"     ("^tie" in 2.6's -ie list is a literal caret, so "ties" is no tie)
    "doggies" -> "doggies", "collies" -> "collies"  (2.6 returns the plural for its -ie words)
    "ears" -> "ears"   (2.6 leaves any word that ends another uninflected word, "shears")
    "cross" -> "cros", "tennis" -> "tenni", "people" -> "person", "women" -> "woman"

Checked equal to Pattern 2.6's `singularize` on the 120,604 words of TextBlob's English lexicon
and their plurals (and on the tests' reference table, derived from Pattern 2.6's code).

Tokenisation: `nltk.word_tokenize` first splits sentences with NLTK's pre-trained English Punkt
model, a data download these machines cannot make. Here sentences are split by an untrained
`PunktSentenceTokenizer` (no learned abbreviations) and each is tokenised by the same
`NLTKWordTokenizer` that `word_tokenize` uses. The residual difference: around abbreviations
("mr. smith", "st. louis") the untrained splitter ends a sentence, so the abbreviation's period
becomes its own token ("mr", ".") where the original keeps "mr."; no object word of the COCO
table is affected. Generated captions, which have no punctuation, tokenise identically.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from nltk.tokenize import NLTKWordTokenizer, PunktSentenceTokenizer
from textblob.en import inflect as _tables

# Pattern 2.6's lists as TextBlob's, minus the entries TextBlob added and plus the ones it
# dropped or fixed (the missing commas of 2.6 joined "wildebeest" "carp", "water" "cheese"
# and "zombie" "bogie" into one entry each; "alergie" is 2.6's spelling).
_TEXTBLOB_ADDED = ({"aircraft", "antelope", "carp", "cattle", "jeans", "moose", "offspring",
                    "wildebeest"}, {"cannabis", "cheese", "water"},
                   {"algerie", "bogie", "bookie", "zombie"})
if not all(added <= set(table) for added, table in zip(
        _TEXTBLOB_ADDED, (_tables.singular_uninflected, _tables.singular_uncountable,
                          _tables.singular_ie))):
    raise ImportError("textblob's inflection tables are not textblob 0.20's, from which "
                      "evaluate.chair_text restores Pattern 2.6: pip install "
                      "'textblob>=0.20,<0.21'")
_UNINFLECTED = (frozenset(_tables.singular_uninflected)
                - _TEXTBLOB_ADDED[0] | {"christmas", "wildebeestcarp"})
_UNCOUNTABLE = frozenset(_tables.singular_uncountable) - _TEXTBLOB_ADDED[1] | {"watercheese"}
_IE_WORDS = (frozenset(_tables.singular_ie) - _TEXTBLOB_ADDED[2]
             | {"alergie", "newbie", "zombiebogie"})
_IRREGULAR = {plural: single for plural, single in _tables.singular_irregular.items()
              if plural != "lynxes"}
_PREPOSITIONS = frozenset(_tables.plural_prepositions)
_RULES: list[tuple[re.Pattern[str], str]] = list(_tables.singular_rules)


@functools.lru_cache(maxsize=65536)
def singular(word: str) -> str:
    """Pattern 2.6's `singularize(word)` (see the module docstring for its quirks)."""
    if "-" in word:
        head, *rest = word.split("-")
        if rest and rest[0] in _PREPOSITIONS:
            return singular(head) + "-" + "-".join(rest)
    if word.endswith("'"):
        return singular(word[:-1]) + "'s"
    lower = word.lower()
    if any(entry.endswith(lower) for entry in _UNINFLECTED) or \
            any(entry.endswith(lower) for entry in _UNCOUNTABLE):
        return word
    if any(lower.endswith(entry + "s") for entry in _IE_WORDS):
        return lower  # 2.6 returns the plural itself here (TextBlob fixed this later)
    for plural, single in _IRREGULAR.items():
        if lower.endswith(plural):
            return re.sub("(?i)" + plural + "$", single, word)
    for suffix, inflection in _RULES:
        match = suffix.search(word)
        if match:
            for k, group in enumerate(match.groups()):
                if group is None:
                    inflection = inflection.replace("\\" + str(k + 1), "")
            return suffix.sub(inflection, word)
    return word


_SENTENCES = PunktSentenceTokenizer()
_WORDS = NLTKWordTokenizer()


def token_spans(text: str) -> Iterator[tuple[int, int]]:
    """Character spans of `nltk.word_tokenize(text)`'s tokens (sentences split untrained)."""
    for start, end in _SENTENCES.span_tokenize(text):
        try:
            spans = list(_WORDS.span_tokenize(text[start:end]))
        except ValueError:  # quotes the aligner cannot map back: fall back to token search
            spans = _find_spans(text[start:end], _WORDS.tokenize(text[start:end]))
        for a, b in spans:
            yield start + a, start + b


def _find_spans(text: str, tokens: list[str]) -> list[tuple[int, int]]:
    """Spans of tokens found left to right in `text` (a token not found gets an empty span)."""
    spans, position = [], 0
    for token in tokens:
        found = text.find(token, position)
        if found < 0:
            spans.append((position, position))
            continue
        spans.append((found, found + len(token)))
        position = found + len(token)
    return spans


def caption_words(caption: str) -> list[tuple[str, int, int]]:
    """(singular word, start, end) of each token of the lower-cased caption, as the original
    CHAIR code prepares a caption; offsets index the caption."""
    lower = caption.lower()
    return [(singular(lower[a:b]), a, b) for a, b in token_spans(lower)]
