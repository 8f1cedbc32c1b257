"""CHAIR: synonym table, caption object matching, ground truth and scores on hand-made cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluate.chair import (ImageChair, Mention, ObjectVocabulary, chair_scores,
                            ground_truth_objects, singular)
from evaluate.coco_objects import COCO_SYNONYMS, NOT_OBJECT_PHRASES

COCO_80 = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]
"""The 80 COCO category names, in COCO id order."""

DEMO_CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape", "synonyms": ["circle", "ball", "disc"]},
    {"id": 2, "name": "square", "supercategory": "shape", "synonyms": ["square", "box", "block"]},
    {"id": 3, "name": "triangle", "supercategory": "shape", "synonyms": ["triangle"]},
]


@pytest.fixture(scope="module")
def coco() -> ObjectVocabulary:
    return ObjectVocabulary.coco()


def found(vocab: ObjectVocabulary, caption: str) -> list[tuple[str, str]]:
    return [(m.word, m.category) for m in vocab.mentions(caption)]


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


# --- synonym table ---------------------------------------------------------------------

def test_coco_synonyms_cover_exactly_the_80_categories() -> None:
    assert len(COCO_80) == len(set(COCO_80)) == 80
    assert list(COCO_SYNONYMS) == COCO_80
    assert all(words[0] == name for name, words in COCO_SYNONYMS.items())


def test_coco_table_builds_without_conflicts(coco: ObjectVocabulary) -> None:
    assert coco.categories == tuple(COCO_SYNONYMS)
    assert all(1 <= len(k) <= 3 for k in coco.phrases)
    assert len(coco.non_objects) == len(NOT_OBJECT_PHRASES)


# --- singular ---------------------------------------------------------------------------

@pytest.mark.parametrize("word, expected", [
    ("dogs", "dog"), ("people", "person"), ("women", "woman"), ("men", "man"),
    ("children", "child"), ("mice", "mouse"), ("knives", "knife"), ("sheep", "sheep"),
    ("bus", "bus"), ("buses", "bus"), ("glass", "glass"), ("glasses", "glass"),
    ("grass", "grass"), ("dress", "dress"), ("species", "species"), ("skis", "ski"),
    ("ski", "ski"), ("skies", "sky"), ("tennis", "tennis"), ("cactus", "cactus"),
    ("is", "is"), ("this", "this"), ("s", "s"), ("tvs", "tv"), ("2", "2"),
])
def test_singular(word: str, expected: str) -> None:
    assert singular(word) == expected


# --- mentions ---------------------------------------------------------------------------

def test_mentions_basic_with_plurals_and_offsets(coco: ObjectVocabulary) -> None:
    caption = "A man riding a horse next to two dogs."
    mentions = coco.mentions(caption)
    assert [(m.word, m.category) for m in mentions] == [
        ("man", "person"), ("horse", "horse"), ("dogs", "dog")]
    assert mentions[2] == Mention("dogs", "dog", 33, 37)


@pytest.mark.parametrize("caption, expected", [
    ("a hot dog on a plate", [("hot dog", "hot dog")]),
    ("two hot-dogs", [("hot-dogs", "hot dog")]),
    ("a Teddy Bear on a bed", [("Teddy Bear", "teddy bear"), ("bed", "bed")]),
    ("a polar bear", [("polar bear", "bear")]),
    ("two men on motor bikes", [("men", "person"), ("motor bikes", "motorcycle")]),
    ("food on the dining table", [("dining table", "dining table")]),
    ("people waiting at a bus stop", [("people", "person")]),
    ("buses at the bus station", [("buses", "bus")]),
    ("a woman wearing glasses", [("woman", "person")]),
    ("two wine glasses and a glass of wine", [("wine glasses", "wine glass"),
                                              ("glass of wine", "wine glass")]),
    ("mice next to a computer mouse", [("mice", "mouse"), ("computer mouse", "mouse")]),
    ("a microwave oven above the oven", [("microwave oven", "microwave"), ("oven", "oven")]),
    ("a sheep dog herding sheep", [("sheep dog", "dog"), ("sheep", "sheep")]),
    ("a baby elephant and a baby", [("baby elephant", "elephant"), ("baby", "person")]),
    ("a skier's skis on the ski slope", [("skier", "person"), ("skis", "skis")]),
    ("a train car on the train tracks", [("train car", "train")]),
    ("a cow on the grass", [("cow", "cow")]),
    ("nothing to see here", []),
])
def test_mentions_phrases(coco: ObjectVocabulary, caption: str,
                          expected: list[tuple[str, str]]) -> None:
    assert found(coco, caption) == expected


@pytest.mark.parametrize("caption", [
    "Two Men on Motor-Bikes near a BUS stop, and a hot dog!",
    "Café: 2 dogs and a teddy bear   on the couch",
    "İstanbul: a cat, a dog's bowl",
])
def test_mention_offsets_index_the_original_caption(coco: ObjectVocabulary,
                                                    caption: str) -> None:
    mentions = coco.mentions(caption)
    assert mentions
    assert all(caption[m.start:m.end] == m.word for m in mentions)


def test_from_categories_uses_own_synonyms_then_coco_then_name() -> None:
    vocab = ObjectVocabulary.from_categories(
        [*DEMO_CATEGORIES, {"id": 4, "name": "dog"}, {"id": 5, "name": "widget"}])
    assert vocab.categories == ("circle", "square", "triangle", "dog", "widget")
    assert found(vocab, "a red ball and a blue box") == [("ball", "circle"), ("box", "square")]
    assert found(vocab, "discs, blocks and puppies") == [
        ("discs", "circle"), ("blocks", "square"), ("puppies", "dog")]
    assert found(vocab, "three widgets") == [("widgets", "widget")]


def test_conflicting_synonyms_are_an_error() -> None:
    with pytest.raises(ValueError, match="'ball' names both 'circle' and 'sports ball'"):
        ObjectVocabulary.from_categories(
            [DEMO_CATEGORIES[0], {"id": 2, "name": "sports ball"}])


# --- instances files and ground truth ---------------------------------------------------

def instances(categories: list[dict], annotations: list[tuple[int, int]],
              images: list[int] = ()) -> dict:
    return {"images": [{"id": i} for i in images], "categories": categories,
            "annotations": [{"id": n, "image_id": i, "category_id": c}
                            for n, (i, c) in enumerate(annotations, 1)]}


def test_from_instances_merges_files(tmp_path: Path) -> None:
    a = write_json(tmp_path / "a.json", instances(DEMO_CATEGORIES[:2], [(1, 1), (1, 2)]))
    b = write_json(tmp_path / "b.json", instances(
        [{"id": 1, "name": "circle", "synonyms": ["circle", "ring"]},
         {"id": 2, "name": "dog"}], [(2, 1)]))
    vocab = ObjectVocabulary.from_instances([a, str(b)])
    assert vocab.categories == ("circle", "square", "dog")
    assert found(vocab, "a ring, a disc, a box and a puppy") == [
        ("ring", "circle"), ("disc", "circle"), ("box", "square"), ("puppy", "dog")]


def test_ground_truth_unites_annotations_and_references(tmp_path: Path) -> None:
    path = write_json(tmp_path / "inst.json",
                      instances(DEMO_CATEGORIES, [(1, 1), (1, 1), (2, 2)], images=[1, 2, 3, 4]))
    vocab = ObjectVocabulary.from_instances([path])
    references = {1: ["a ball next to a triangle", "a red disc"], 2: ["a blue box"],
                  3: ["two triangles"], 5: ["a ball"]}
    assert ground_truth_objects([path], references, vocab) == {
        1: {"circle", "triangle"}, 2: {"square"}, 3: {"triangle"}, 4: set(), 5: {"circle"}}


@pytest.mark.parametrize("content, reason", [
    ("{not json", "cannot read"),
    (json.dumps({"annotations": []}), "no 'categories' list"),
    (json.dumps({"categories": []}), "no 'annotations' list"),
    (json.dumps({"categories": [{"id": 1}], "annotations": []}), "lacks id or name"),
    (json.dumps([1, 2]), "top level is not an object"),
])
def test_malformed_instances_name_the_file(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "broken_instances.json"
    path.write_text(content)
    for load in (lambda: ObjectVocabulary.from_instances([path]),
                 lambda: ground_truth_objects([path], {}, ObjectVocabulary.coco())):
        with pytest.raises(ValueError) as info:
            load()
        message = str(info.value)
        assert str(path) in message and reason in message and "\n" not in message


def test_missing_instances_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere.json: cannot read"):
        ObjectVocabulary.from_instances([tmp_path / "nowhere.json"])


def test_unknown_category_id_is_an_error(tmp_path: Path) -> None:
    path = write_json(tmp_path / "inst.json", instances(DEMO_CATEGORIES, [(1, 9)]))
    with pytest.raises(ValueError, match="inst.json: annotation 1 has unknown category_id 9"):
        ground_truth_objects([path], {}, ObjectVocabulary.from_instances([path]))


# --- scores -----------------------------------------------------------------------------

def test_chair_scores_by_hand(coco: ObjectVocabulary) -> None:
    captions = {1: "a man riding a horse next to two dogs",
                2: "a cat sleeping on a couch next to another cat",
                3: "a hot dog and a pizza on a dining table"}
    truth = {1: {"person", "horse"}, 2: {"cat", "couch", "remote"},
             3: {"hot dog", "dining table"}, 4: {"bus"}}
    scores, images = chair_scores(captions, truth, coco)
    # mentions 3 + 2 (cat once) + 3 = 8; hallucinated: dog, pizza; recall (2+2+2)/(2+3+2)
    assert scores == {"CHAIR_i": 2 / 8, "CHAIR_s": 2 / 3, "object_recall": 6 / 7,
                      "mentions": 8, "hallucinations": 2, "images": 3}
    assert images[1] == ImageChair(1, ["person", "horse", "dog"], ["dog"], ["person", "horse"],
                                   ["horse", "person"], [Mention("dogs", "dog", 33, 37)])
    assert images[2].mentioned == ["cat", "couch"] and images[2].hallucinated == []
    assert images[2].ground_truth == ["cat", "couch", "remote"]
    assert images[3].hallucinated == ["pizza"]
    assert images[3].covered == ["hot dog", "dining table"]


def test_every_hallucinated_occurrence_is_highlighted(coco: ObjectVocabulary) -> None:
    caption = "a dog chasing another dog past a man"
    scores, images = chair_scores({7: caption}, {7: {"person"}}, coco)
    assert scores["CHAIR_i"] == 1 / 2 and scores["CHAIR_s"] == 1.0
    words = images[7].hallucinated_words
    assert [(m.word, m.start, m.end) for m in words] == [("dog", 2, 5), ("dog", 22, 25)]
    assert images[7].to_json() == {
        "image_id": 7, "mentioned": ["dog", "person"], "hallucinated": ["dog"],
        "covered": ["person"], "ground_truth": ["person"],
        "hallucinated_words": [{"word": "dog", "category": "dog", "start": 2, "end": 5},
                               {"word": "dog", "category": "dog", "start": 22, "end": 25}]}
    json.dumps(images[7].to_json())


def test_no_mentions_and_no_captions_score_zero(coco: ObjectVocabulary) -> None:
    scores, _ = chair_scores({1: "something blurry"}, {1: set()}, coco)
    assert scores == {"CHAIR_i": 0.0, "CHAIR_s": 0.0, "object_recall": 0.0,
                      "mentions": 0, "hallucinations": 0, "images": 1}
    scores, images = chair_scores({}, {}, coco)
    assert scores["images"] == 0 and scores["CHAIR_s"] == 0.0 and images == {}


def test_missing_ground_truth_names_the_image(coco: ObjectVocabulary) -> None:
    with pytest.raises(ValueError, match="image id 42"):
        chair_scores({1: "a dog", 42: "a cat"}, {1: {"dog"}}, coco)
