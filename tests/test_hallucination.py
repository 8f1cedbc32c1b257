"""Hallucination analysis: per-category CHAIR counts, training co-occurrence, the JSON file,
the report's table and `category_rate_changes`, on captions whose counts are known by hand
(real CHAIR code, original vocabulary)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluate.chair import ImageChair, chair_scores
from evaluate.chair_vocabulary import ChairVocabulary, vocabulary_for
from evaluate.hallucination import (HALLUCINATION_FILE, category_counts, category_rate_changes,
                                    hallucination_analysis, load_hallucination,
                                    rate_change_section, training_cooccurrence,
                                    write_hallucination)
from evaluate.report import write_report
from evaluate.report_inputs import hallucination_table
from shared.karpathy import load_karpathy, split_records

# image -> (caption, ground truth); mentions by the original CHAIR code:
#   1: cat, dog, couch       dog hallucinated
#   2: dog, dog, bench       bench hallucinated ("dogs" singularised)
#   3: dog, bed, cat         dog hallucinated
#   4: none
TEST_IMAGES = {
    1: ("a cat and a dog on a couch", {"cat", "couch"}),
    2: ("two dogs chasing a dog near a bench", {"dog", "person"}),
    3: ("a dog lying on a bed with a cat", {"cat", "bed"}),
    4: ("an empty room", {"chair"}),
}

# training images (train + restval) and the categories their captions mention
TRAIN = [
    ("train", ["a cat on a couch", "a dog on the couch"]),   # cat, couch, dog
    ("train", ["a cat sleeping", "a kitten on a bed"]),      # cat, bed
    ("restval", ["a dog and a cat"]),                        # dog, cat
    ("train", ["a man on a bench"]),                         # person, bench
    ("val", ["a dog with a frisbee"]),                       # not training
    ("test", ["a dog on a bench"]),                          # not training
]


@pytest.fixture(scope="module")
def coco() -> ChairVocabulary:
    return ChairVocabulary.coco()


@pytest.fixture(scope="module")
def chair_images(coco: ChairVocabulary) -> dict[int, ImageChair]:
    captions = {i: caption for i, (caption, _) in TEST_IMAGES.items()}
    truth = {i: objects for i, (_, objects) in TEST_IMAGES.items()}
    return chair_scores(captions, truth, coco)[1]


def karpathy_json(path: Path) -> Path:
    images = [{"split": split, "filename": f"{k}.jpg", "imgid": k,
               "sentences": [{"raw": s, "tokens": s.split()} for s in sentences]}
              for k, (split, sentences) in enumerate(TRAIN)]
    path.write_text(json.dumps({"images": images}))
    return path


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory, coco: ChairVocabulary,
             chair_images: dict[int, ImageChair]) -> dict:
    dataset = load_karpathy(karpathy_json(tmp_path_factory.mktemp("k") / "d.json"), "img")
    training = training_cooccurrence((r.captions for r in split_records(dataset, "train")),
                                     coco)
    return hallucination_analysis(chair_images, coco, training, top=10, top_k=5)


def test_category_counts_by_hand(coco: ChairVocabulary,
                                 chair_images: dict[int, ImageChair]) -> None:
    counts = category_counts(chair_images.values(), coco.categories)
    assert len(counts) == 80 and {c.category for c in counts} == set(coco.categories)
    head = [(c.category, c.mentions, c.hallucinated, c.rate, c.images, c.hallucinated_images)
            for c in counts[:5]]
    assert head == [("dog", 4, 2, 0.5, 3, 2),         # most hallucinated first
                    ("bench", 1, 1, 1.0, 1, 1),
                    ("cat", 2, 0, 0.0, 2, 0),          # then more mentions
                    ("couch", 1, 0, 0.0, 1, 0),        # then vocabulary order
                    ("bed", 1, 0, 0.0, 1, 0)]
    assert all(c.mentions == 0 and c.rate is None for c in counts[5:])
    # the per-category counts add up to CHAIRi's numerator and denominator
    captions = {i: caption for i, (caption, _) in TEST_IMAGES.items()}
    scores, _ = chair_scores(captions, {i: t for i, (_, t) in TEST_IMAGES.items()}, coco)
    assert sum(c.mentions for c in counts) == scores["mentions"] == 9
    assert sum(c.hallucinated for c in counts) == scores["hallucinations"] == 3
    assert scores["CHAIRi"] == pytest.approx(3 / 9)


def test_demo_vocabulary_gives_its_own_categories() -> None:
    categories = [{"id": 1, "name": "circle", "synonyms": ["circle", "ball"]},
                  {"id": 2, "name": "square", "synonyms": ["square", "box"]}]
    vocab = vocabulary_for(categories)
    _, images = chair_scores({1: "a red ball and two boxes", 2: "a ball next to a ball"},
                             {1: {"circle"}, 2: {"square"}}, vocab)
    counts = category_counts(images.values(), vocab.categories)
    assert [(c.category, c.mentions, c.hallucinated, c.rate) for c in counts] == [
        ("circle", 3, 2, 2 / 3), ("square", 1, 1, 1.0)]


def test_training_cooccurrence(tmp_path: Path, coco: ChairVocabulary) -> None:
    dataset = load_karpathy(karpathy_json(tmp_path / "d.json"), tmp_path)
    training = training_cooccurrence((r.captions for r in split_records(dataset, "train")),
                                     coco)
    assert (training.images, training.captions) == (4, 6)  # restval included, val/test not
    assert training.counts == {"cat": 3, "dog": 2, "couch": 1, "bed": 1, "person": 1,
                               "bench": 1}
    assert training.pairs["dog", "cat"] == training.pairs["cat", "dog"] == 2
    assert training.pairs["dog", "bed"] == 0
    assert training.p_given("dog", "cat") == pytest.approx(2 / 3)  # P(dog | cat)
    assert training.p_given("cat", "dog") == 1.0
    assert training.p_given("dog", "couch") == 1.0
    assert training.p_given("dog", "bed") == 0.0
    assert training.p_given("dog", "frisbee") is None  # no training image mentions it
    assert training.top_with("dog", 5) == [
        {"category": "cat", "training_images": 2, "p_given": pytest.approx(2 / 3)},
        {"category": "couch", "training_images": 1, "p_given": 1.0}]
    assert training.top_with("dog", 1)[0]["category"] == "cat"


def test_present_when_hallucinated_and_layout(analysis: dict) -> None:
    assert analysis["vocabulary"] == "original" and analysis["images"] == 4
    assert (analysis["mentions"], analysis["hallucinated_mentions"]) == (9, 3)
    assert analysis["training"] == {"split": "train+restval", "images": 4, "captions": 6}
    assert (analysis["top"], analysis["top_k"]) == (10, 5)
    assert set(analysis["definitions"]) >= {"rate", "p_given", "present_when_hallucinated"}
    assert len(analysis["categories"]) == 80
    assert analysis["categories"][0] == {"category": "dog", "mentions": 4, "hallucinated": 2,
                                         "rate": 0.5, "images": 3, "hallucinated_images": 2}
    dog, bench = analysis["hallucinated"]  # only categories with a hallucination
    assert (dog["category"], dog["hallucinated"], dog["training_images"]) == ("dog", 2, 2)
    assert dog["training_share"] == 0.5
    # images 1 and 3 hallucinate one dog each; their ground truth: {cat, couch}, {cat, bed}
    assert dog["present_when_hallucinated"] == [
        {"category": "cat", "mentions": 2, "share": 1.0, "training_images": 2,
         "p_given": pytest.approx(2 / 3)},
        {"category": "couch", "mentions": 1, "share": 0.5, "training_images": 1,
         "p_given": 1.0},                                 # ties: stronger prior first
        {"category": "bed", "mentions": 1, "share": 0.5, "training_images": 0, "p_given": 0.0}]
    assert [e["category"] for e in dog["training_cooccurring"]] == ["cat", "couch"]
    assert bench["present_when_hallucinated"] == [
        {"category": "person", "mentions": 1, "share": 1.0, "training_images": 1,
         "p_given": 1.0},
        {"category": "dog", "mentions": 1, "share": 1.0, "training_images": 0, "p_given": 0.0}]


def test_repeated_hallucinations_count_per_mention(coco: ChairVocabulary) -> None:
    _, images = chair_scores({1: "a dog and a dog and a cat"}, {1: {"cat", "sink"}}, coco)
    training = training_cooccurrence([["a dog and a cat"]], coco)
    result = hallucination_analysis(images, coco, training, top=1, top_k=1)
    (dog,) = result["hallucinated"]
    assert (dog["mentions"], dog["hallucinated"], dog["hallucinated_images"]) == (2, 2, 1)
    assert dog["present_when_hallucinated"] == [  # ties by prior: cat (1.0) before sink (None)
        {"category": "cat", "mentions": 2, "share": 1.0, "training_images": 1, "p_given": 1.0}]


def test_json_file_round_trip_and_stale_removal(tmp_path: Path, analysis: dict) -> None:
    write_hallucination(tmp_path, analysis)
    path = tmp_path / HALLUCINATION_FILE
    assert json.loads(path.read_text()) == json.loads(json.dumps(analysis))
    assert load_hallucination(path)["hallucinated"][0]["category"] == "dog"
    write_hallucination(tmp_path, None)  # CHAIR not computed: no stale analysis stays
    assert not path.exists()
    path.write_text('{"categories": [{"category": "dog"}], "hallucinated": []}')
    with pytest.raises(ValueError, match=r"hallucination.json: not a hallucination analysis "
                                         r"\(KeyError: 'mentions'\); re-run"):
        load_hallucination(path)


def test_report_table_from_the_file(tmp_path: Path, analysis: dict) -> None:
    assert hallucination_table(tmp_path) is None  # scored without CHAIR: no section
    write_hallucination(tmp_path, analysis)
    table = hallucination_table(tmp_path)
    assert [(r.category, r.mentions, r.hallucinated, r.rate) for r in table.rows] == [
        ("dog", 4, 2, 0.5), ("bench", 1, 1, 1.0)]
    assert (table.mentions, table.hallucinated, table.training_images) == (9, 3, 4)
    assert [(o.category, o.count) for o in table.rows[0].present] == [
        ("cat", 2), ("couch", 1), ("bed", 1)]
    html = write_report(tmp_path / "r.html", title="t", images=[], metrics={},
                        hallucinations=table).read_text(encoding="utf-8")
    section = html[html.index('<section class="hallucinations" id="hallucinations">'):]
    assert "<h2>Hallucinations by category</h2>" in section
    assert "3 of 9 mentions hallucinated" in section
    assert ("<tr><th>dog</th><td class=\"num\">4</td><td class=\"num\">2</td>"
            "<td class=\"num\">50.0%</td>") in section
    assert "cat <b>2×</b> <i>P 0.67</i>" in section


def counts_run(folder: Path, label: str, counts: dict[str, tuple[int, int]]) -> tuple[str, Path]:
    """An eval folder whose hallucination.json has, per category, (mentions, hallucinated):
    one image per mention, made by the real analysis."""
    coco = ChairVocabulary.coco()
    images, k = {}, 0
    for category, (mentions, hallucinated) in counts.items():
        for j in range(mentions):
            bad = j < hallucinated
            images[k] = ImageChair(k, [category], [category] if bad else [],
                                   [] if bad else [category], [] if bad else [category], [])
            k += 1
    folder.mkdir(parents=True)
    write_hallucination(folder, hallucination_analysis(
        images, coco, training_cooccurrence([], coco)))
    (folder / "metrics.json").write_text("{}")
    return label, folder


def test_category_rate_changes(tmp_path: Path) -> None:
    base = counts_run(tmp_path / "base", "BASE", {"dog": (10, 5), "cat": (20, 2),
                                                  "bench": (3, 3), "car": (8, 2)})
    pma = counts_run(tmp_path / "pma", "PMA", {"dog": (10, 1), "cat": (20, 4),
                                               "bench": (4, 0), "car": (8, 2)})
    # the eval folder, its metrics.json or the file itself name a run
    runs = [base, ("PMA", pma[1] / "metrics.json")]
    lines = category_rate_changes(runs, top=2, min_mentions=5)
    assert lines == [
        "**Hallucination rate by category, largest changes vs BASE (hallucinated / mentions, "
        "seeds pooled; categories with at least 5 mentions in both runs)**",
        "- PMA: dog 10.0% (1/10) vs 50.0% (5/10), -40.0 points",
        "- PMA: cat 20.0% (4/20) vs 10.0% (2/20), +10.0 points"]   # bench: 3 mentions
    assert category_rate_changes([base, ("PMA", pma[1] / HALLUCINATION_FILE)], top=5)[3] == \
        "- PMA: car 25.0% (2/8) vs 25.0% (2/8), +0.0 points"
    assert category_rate_changes([base], top=5) == []
    assert category_rate_changes([base, pma], min_mentions=3)[1] == \
        "- PMA: bench 0.0% (0/4) vs 100.0% (3/3), -100.0 points"


def test_category_rate_changes_pools_seeds(tmp_path: Path) -> None:
    base = counts_run(tmp_path / "base", "BASE", {"dog": (10, 5)})
    seed0 = counts_run(tmp_path / "s0", "PMA", {"dog": (6, 0)})[1]
    seed1 = counts_run(tmp_path / "s1", "PMA", {"dog": (4, 2)})[1]
    title, lines = rate_change_section([base, ("PMA", [seed0, seed1 / "metrics.json"])])
    assert title.startswith("Hallucination rate by category, largest changes vs BASE")
    assert lines == ["PMA: dog 20.0% (2/10) vs 50.0% (5/10), -30.0 points"]


def test_category_rate_changes_without_the_file(tmp_path: Path) -> None:
    base = counts_run(tmp_path / "base", "BASE", {"dog": (10, 5)})
    (tmp_path / "old").mkdir()
    lines = category_rate_changes([base, ("OLD", tmp_path / "old"),
                                   counts_run(tmp_path / "few", "FEW", {"dog": (2, 1)}),
                                   ("MIXED", [base[1], tmp_path / "old"])])
    assert lines[1].startswith("- OLD: no hallucination.json (")
    assert lines[1].endswith("): scored without CHAIR or before it existed")
    assert lines[2] == "- FEW: no category with at least 5 mentions in both runs"
    assert lines[3].startswith("- MIXED: no hallucination.json (")
    assert category_rate_changes([("OLD", tmp_path / "old"), base])[1].startswith(
        "- OLD: no hallucination.json (")
    (tmp_path / "old" / HALLUCINATION_FILE).write_text("[]")
    with pytest.raises(ValueError, match="not a hallucination analysis"):
        category_rate_changes([base, ("OLD", tmp_path / "old")])
