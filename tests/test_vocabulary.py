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


def test_letters_of_every_script_are_kept() -> None:
    assert tokenize("Un CAFÉ à Zürich, naïve Straße!") == [
        "un", "café", "à", "zürich", "naïve", "straße"]
    assert tokenize("cafe\u0301") == ["café"]   # decomposed é: NFC, one word
    assert tokenize("一只猫 坐在 桌子上。") == ["一只猫", "坐在", "桌子上"]   # CJK runs: words
    assert tokenize("snake_case — 3-year-old") == ["snake", "case", "3", "year", "old"]
    vocab = build_vocabulary([["café", "Café"], ["猫"]], min_count=1)
    assert vocab.words[4:] == ["café", "猫"]
    assert vocab.decode(vocab.encode(["CAFÉ", "猫"])) == "café 猫"


def test_words_agree_with_what_scoring_makes_of_the_references() -> None:
    """pycocoevalcap's PTB tokenizer (real, Java) over raw captions gives the words our
    normalisation gives, non-ASCII letters and CJK included (punctuation aside)."""
    from evaluate.coco_metrics import ptb_tokenize

    captions = ["A café in Zürich.", "ÉCOLE naïve, Straße", "一只猫 坐在 桌子上",
                "Ein Mädchen läuft über die Brücke", "ça va señor"]
    tokens = ptb_tokenize({i: [c] for i, c in enumerate(captions)})
    for i, caption in enumerate(captions):
        assert tokens[i] == [" ".join(tokenize(caption))], caption


def test_decomposed_references_match_composed_caption_words(tmp_path: Path) -> None:
    """A reference writing é as e + U+0301 is scored as the "é" our vocabulary gives."""
    import json

    from evaluate.coco_metrics import ptb_tokenize
    from evaluate.references import reference_captions
    from shared.karpathy import ImageRecord

    decomposed = "Un cafe\u0301 a\u0300 Zu\u0308rich."
    record = ImageRecord(7, tmp_path / "7.jpg", "test", (decomposed,), ())
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": 7, "caption": decomposed}]}))
    for refs in (reference_captions([record], []), reference_captions([record], [str(coco)])):
        assert refs == {7: ["Un café à Zürich."]}
        assert ptb_tokenize(refs)[7] == [" ".join(tokenize(decomposed))] == ["un café à zürich"]
