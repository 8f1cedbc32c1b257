"""Vocabulary: normalisation, min count, specials, encode/decode and save/load."""

from pathlib import Path

import pytest

from shared.vocabulary import SPECIALS, Vocabulary, build_vocabulary, tokenize


def test_normalisation() -> None:
    assert tokenize("A Man, riding a HORSE!  (outside)") == [
        "a", "man", "riding", "a", "horse", "outside"]
    assert tokenize("it's a dog's toy") == ["it", "s", "a", "dog", "s", "toy"]


def test_min_count_and_order() -> None:
    captions = [["a", "dog"], ["a", "Dog."], ["a", "cat"], ["A", "bird"]]
    vocab = build_vocabulary(captions, min_count=2)
    assert vocab.words == [*SPECIALS, "a", "dog"]
    assert build_vocabulary(captions, min_count=1).words[4:] == ["a", "dog", "bird", "cat"]


def test_encode_decode_roundtrip(tmp_path: Path) -> None:
    vocab = build_vocabulary([["a", "red", "ball"]] * 3, min_count=1)
    ids = vocab.encode(["A", "red", "kite"])
    assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id and ids[3] == vocab.unk_id
    assert vocab.decode(vocab.encode(["a", "red", "ball"])) == "a red ball"
    assert len(vocab.encode(["a"] * 50, max_words=20)) == 22
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").words == vocab.words
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="bad.json: not a vocabulary file"):
        Vocabulary.load(tmp_path / "bad.json")
