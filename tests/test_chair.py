"""CHAIR: the original's rules on captions whose mentions were derived from the original code,
Pattern 2.6 singulars, ground truth, corpus scores; and the opt-in extended vocabulary.

Reference values: every expected mention list and singular below was produced by the original
`utils/chair.py` (`CHAIR.__init__` and `caption_to_words` executed from its own source, with
`data/synonyms.txt`) and Pattern 2.6's `singularize`, outside this project.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluate.chair import (ImageChair, Mention, chair_scores, ground_truth_objects,
                            metric_names, vocabulary_of)
from evaluate.chair_extended import ExtendedVocabulary
from evaluate.chair_extended import singular as extended_singular
from evaluate.chair_synonyms import SYNONYM_LINES, synonym_table
from evaluate.chair_text import singular
from evaluate.chair_vocabulary import ChairVocabulary, vocabulary_for
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
def coco() -> ChairVocabulary:
    return ChairVocabulary.coco()


@pytest.fixture(scope="module")
def extended() -> ExtendedVocabulary:
    return ExtendedVocabulary.coco()


def categories(vocab, caption: str) -> list[str]:  # noqa: ANN001
    return [m.category for m in vocab.mentions(caption)]


def found(vocab, caption: str) -> list[tuple[str, str]]:  # noqa: ANN001
    return [(m.word, m.category) for m in vocab.mentions(caption)]


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


# --- the original's table ----------------------------------------------------------------

def test_original_table_has_the_80_categories_in_coco_order(coco: ChairVocabulary) -> None:
    assert len(SYNONYM_LINES) == 80
    assert list(coco.categories) == COCO_80
    table = synonym_table()
    assert len(table) == 403
    # entries as the original has them, and none it lacks
    assert table["seat"] == table["stool"] == "chair"
    assert table["bow"] == "tie" and table["monitor"] == "tv"
    assert table["televison"] == "tv" and table["phon"] == "cell phone"
    assert "glove" not in table and "bat" not in table and "plant" not in table
    # the original's unmatched entries keep their stray space / capital
    assert " motor bike" in table and "motor bike" not in table
    assert " cheesecake" in table and "iPhone" in table


# --- Pattern 2.6 singulars (reference values from Pattern 2.6's `singularize`) ------------

PATTERN_2_6 = [
    ("dogs", "dog"), ("people", "person"), ("women", "woman"), ("men", "man"),
    ("children", "child"), ("mice", "mouse"), ("knives", "knife"), ("sheep", "sheep"),
    ("bus", "bu"), ("buses", "bus"), ("glass", "glas"), ("glasses", "glass"),
    ("grass", "gras"), ("dress", "dres"), ("species", "species"), ("skis", "ski"),
    ("ski", "ski"), ("skies", "sky"), ("tennis", "tenni"), ("cactus", "cactu"), ("is", "is"),
    ("this", "thi"), ("s", "s"), ("tvs", "tv"), ("2", "2"), ("ties", "ty"),
    ("doggies", "doggies"), ("collies", "collies"), ("ears", "ears"), ("cross", "cros"),
    ("crosses", "cross"), ("ponies", "pony"), ("benches", "bench"), ("leaves", "leaf"),
    ("geese", "goose"), ("oxen", "ox"), ("boxes", "box"), ("'s", "'"), ("hot-dogs", "hot-dog"),
    ("mothers-in-law", "mother-in-law"), ("dogs'", "dog's"), ("taxes", "taxe"), ("axes", "axe"),
    ("lens", "len"), ("jeans", "jean"), ("cattle", "cattle"), ("water", "water"),
    ("christmas", "christmas"), ("rhombus", "rhombu"), ("discs", "disc"), ("plus", "plu"),
    ("zombies", "zombie"), ("cookies", "cookies"),
]


@pytest.mark.parametrize("word, expected", PATTERN_2_6)
def test_singular_is_pattern_2_6(word: str, expected: str) -> None:
    assert singular(word) == expected


# --- mentions: captions run through the original code -----------------------------------

ORIGINAL_MENTIONS = [
    # repeats count
    ("a dog and a dog and a cat", ["dog", "dog", "cat"]),
    ("A man riding a horse next to two dogs.", ["person", "horse", "dog"]),
    # double words
    ("a hot dog on a plate", ["hot dog"]),
    ("two hot dogs next to a dog", ["hot dog", "dog"]),
    ("a teddy bear sitting next to a bear", ["teddy bear", "bear"]),
    ("a stop sign on the corner", ["stop sign"]),
    ("a man talking on a cell phone", ["person", "cell phone"]),
    ("a woman holding a mobile phone", ["person", "cell phone"]),
    ("a man on a motor bike", ["person"]),
    ("two men riding motorcycles past a motor cycle", ["person", "motorcycle", "motorcycle"]),
    ("an air plane flying over a jet", ["airplane", "airplane"]),
    ("a potted plant near a plant", ["potted plant"]),
    ("a man holding a baseball bat and a baseball glove",
     ["person", "baseball bat", "baseball glove"]),
    ("a player at home plate", ["person"]),
    ("a man in a suit case", ["person", "suitcase"]),
    ("a suit case and luggage", ["suitcase", "suitcase"]),
    ("a stove top oven in a kitchen", ["oven", "oven"]),
    ("a laptop computer on a desk", ["laptop", "dining table"]),
    ("a street light next to a traffic light", ["traffic light", "traffic light"]),
    ("a tennis racket and a racket", ["tennis racket", "tennis racket"]),
    ("children playing with a sports ball", ["person", "sports ball"]),
    # baby / adult animals, passenger vehicles
    ("a baby elephant standing next to its mother", ["elephant", "person"]),
    ("an adult giraffe and a baby giraffe", ["giraffe", "giraffe"]),
    ("a baby sitting in a high chair", ["person", "chair"]),
    ("a baby cub near an adult animal", []),
    ("a passenger jet on the runway", ["airplane"]),
    ("passengers boarding a passenger train", ["person", "train"]),
    # ties, toilets, seats
    ("a man wearing a bow tie", ["person", "tie"]),
    ("a man wearing a tie and a bow", ["person", "tie", "tie"]),
    ("two ties on a rack", []),
    ("a toilet seat in a small bathroom", ["toilet"]),
    ("the seat of a toilet", ["toilet"]),
    ("a seat next to a table", ["chair", "dining table"]),
    ("a stool next to a monitor", ["chair", "tv"]),
    # phrases the original does not exclude (and Pattern's "bus" -> "bu")
    ("people waiting at a bus stop", ["person"]),
    ("two buses parked near the bus station", ["bus"]),
    ("a train at the train station", ["train", "train"]),
    ("a train on the train track", ["train"]),
    # glasses, gloves, bats
    ("a wine glass next to a bottle", ["wine glass", "bottle"]),
    ("two wine glasses on the table", ["wine glass", "dining table"]),
    ("a woman wearing glasses", ["person"]),
    ("a glove and a bat on the field", []),
    # singulars and tokens
    ("two doggies and two puppies", ["dog"]),
    ("a man's hot-dog and a dog's bowl", ["person", "dog", "bowl"]),
    ("women and mice", ["person", "mouse"]),
    ("a cheesecake next to a cake", ["cake"]),
    ("a skier on skis", ["person", "skis"]),
    ("a tv and a television on a couch", ["tv", "tv", "couch"]),
    ("nothing to see here", []),
]


@pytest.mark.parametrize("caption, expected", ORIGINAL_MENTIONS)
def test_mentions_equal_the_original(coco: ChairVocabulary, caption: str,
                                     expected: list[str]) -> None:
    assert categories(coco, caption) == expected


def test_mention_words_and_offsets_index_the_caption(coco: ChairVocabulary) -> None:
    caption = "A baby elephant, two Hot Dogs and a toilet seat."
    mentions = coco.mentions(caption)
    assert [(m.word, m.category) for m in mentions] == [
        ("baby elephant", "elephant"), ("Hot Dogs", "hot dog"), ("toilet seat", "toilet")]
    assert all(caption[m.start:m.end] == m.word for m in mentions)
    assert mentions[1] == Mention("Hot Dogs", "hot dog", 21, 29)


def test_dataset_categories_keep_their_synonyms_under_the_original_rules() -> None:
    vocab = vocabulary_for([*DEMO_CATEGORIES, {"id": 4, "name": "cross",
                                               "synonyms": ["cross", "plus"]}])
    assert vocab.categories == ("circle", "square", "triangle", "cross")
    assert categories(vocab, "a red ball, two boxes and a blue disc") == [
        "circle", "square", "circle"]
    # Pattern makes "cross" "cros" and "crosses" "cross": both forms are entered
    assert categories(vocab, "a cross and two crosses and a plus") == ["cross", "cross", "cross"]
    with pytest.raises(ValueError, match="one- or two-word"):
        ChairVocabulary.from_synonyms({"thing": ["big red thing"]})
    with pytest.raises(ValueError, match="names both"):
        ChairVocabulary.from_synonyms({"circle": ["ball"], "sphere": ["ball"]})


def test_coco_categories_without_synonyms_get_the_original_table(coco: ChairVocabulary) -> None:
    entries = [{"id": i, "name": n} for i, n in enumerate(COCO_80, 1)]
    assert vocabulary_for(entries) == coco
    assert vocabulary_for(entries, "extended").name == "extended"
    with pytest.raises(ValueError, match="eval.chair_vocabulary"):
        vocabulary_for(entries, "loose")


# --- scores -----------------------------------------------------------------------------

def test_corpus_chair_equals_the_original(coco: ChairVocabulary) -> None:
    """CHAIRs 4/7, CHAIRi 4/13 as the original's `compute_chair` counts these captions."""
    captions = {1: "a dog and a dog and a cat", 2: "a man on a motor bike next to a bus",
                3: "two buses and a truck at the bus stop", 4: "a baby elephant and a man",
                5: "a toilet seat and a sink", 6: "a man in a bow tie holding a wine glass",
                7: "nothing to see here"}
    truth = {1: {"dog"}, 2: {"person", "motorcycle"}, 3: {"bus"}, 4: {"elephant"},
             5: {"toilet", "sink"}, 6: {"person", "tie"}, 7: set()}
    scores, images = chair_scores(captions, truth, coco)
    assert scores["CHAIRs"] == pytest.approx(4 / 7)
    assert scores["CHAIRi"] == pytest.approx(4 / 13)
    assert scores["mentions"] == 13 and scores["hallucinations"] == 4
    assert [images[i].hallucinated for i in sorted(images)] == [
        ["cat"], [], ["truck"], ["person"], [], ["wine glass"], []]


def test_repeated_mentions_count_for_chair_i(coco: ChairVocabulary) -> None:
    scores, images = chair_scores({1: "a dog and a dog and a cat"}, {1: {"dog"}}, coco)
    assert scores["CHAIRi"] == pytest.approx(1 / 3) and scores["CHAIRs"] == 1.0
    scores, images = chair_scores({1: "a dog and a dog and a cat"}, {1: {"cat"}}, coco)
    assert scores["CHAIRi"] == pytest.approx(2 / 3)
    assert images[1].mentioned == ["dog", "dog", "cat"]
    assert images[1].hallucinated == ["dog", "dog"] and images[1].covered == ["cat"]


def test_chair_scores_by_hand(coco: ChairVocabulary) -> None:
    captions = {1: "a man riding a horse next to two dogs",
                2: "a cat sleeping on a couch next to another cat",
                3: "a hot dog and a pizza on a dining table"}
    truth = {1: {"person", "horse"}, 2: {"cat", "couch", "remote"},
             3: {"hot dog", "dining table"}, 4: {"bus"}}
    scores, images = chair_scores(captions, truth, coco)
    # mentions 3 + 3 (cat twice) + 3 = 9; hallucinated: dog, pizza; recall (2+2+2)/(2+3+2)
    assert scores == {"CHAIRs": 2 / 3, "CHAIRi": 2 / 9, "object_recall": 6 / 7,
                      "mentions": 9, "hallucinations": 2, "images": 3}
    assert images[1] == ImageChair(1, ["person", "horse", "dog"], ["dog"], ["person", "horse"],
                                   ["horse", "person"], [Mention("dogs", "dog", 33, 37)])
    assert images[2].mentioned == ["cat", "couch", "cat"] and images[2].hallucinated == []
    assert images[2].ground_truth == ["cat", "couch", "remote"]
    assert images[3].hallucinated == ["pizza"]
    assert images[3].covered == ["hot dog", "dining table"]


def test_every_hallucinated_occurrence_is_highlighted(coco: ChairVocabulary) -> None:
    caption = "a dog chasing another dog past a man"
    scores, images = chair_scores({7: caption}, {7: {"person"}}, coco)
    assert scores["CHAIRi"] == 2 / 3 and scores["CHAIRs"] == 1.0
    words = images[7].hallucinated_words
    assert [(m.word, m.start, m.end) for m in words] == [("dog", 2, 5), ("dog", 22, 25)]
    assert images[7].to_json() == {
        "image_id": 7, "mentioned": ["dog", "dog", "person"], "hallucinated": ["dog", "dog"],
        "covered": ["person"], "ground_truth": ["person"],
        "hallucinated_words": [{"word": "dog", "category": "dog", "start": 2, "end": 5},
                               {"word": "dog", "category": "dog", "start": 22, "end": 25}]}
    json.dumps(images[7].to_json())


def test_extended_scores_have_their_own_names(extended: ExtendedVocabulary) -> None:
    assert metric_names("original") == ("CHAIRs", "CHAIRi")
    assert metric_names("extended") == ("CHAIRs_extended", "CHAIRi_extended")
    scores, _ = chair_scores({1: "a bus at the bus stop"}, {1: set()}, extended)
    assert scores["CHAIRs_extended"] == 1.0 and "CHAIRs" not in scores


def test_no_mentions_and_no_captions_score_zero(coco: ChairVocabulary) -> None:
    scores, _ = chair_scores({1: "something blurry"}, {1: set()}, coco)
    assert scores == {"CHAIRs": 0.0, "CHAIRi": 0.0, "object_recall": 0.0,
                      "mentions": 0, "hallucinations": 0, "images": 1}
    scores, images = chair_scores({}, {}, coco)
    assert scores["images"] == 0 and scores["CHAIRs"] == 0.0 and images == {}


def test_missing_ground_truth_names_the_image(coco: ChairVocabulary) -> None:
    with pytest.raises(ValueError, match="image id 42"):
        chair_scores({1: "a dog", 42: "a cat"}, {1: {"dog"}}, coco)


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
    vocab = vocabulary_of([a, str(b)])
    assert vocab.categories == ("circle", "square", "dog")
    assert found(vocab, "a ring, a disc, a box and a puppy") == [
        ("ring", "circle"), ("disc", "circle"), ("box", "square"), ("puppy", "dog")]


def test_ground_truth_unites_annotations_and_references(tmp_path: Path) -> None:
    path = write_json(tmp_path / "inst.json",
                      instances(DEMO_CATEGORIES, [(1, 1), (1, 1), (2, 2)], images=[1, 2, 3, 4]))
    vocab = vocabulary_of([path])
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
    for load in (lambda: vocabulary_of([path]),
                 lambda: ground_truth_objects([path], {}, ChairVocabulary.coco())):
        with pytest.raises(ValueError) as info:
            load()
        message = str(info.value)
        assert str(path) in message and reason in message and "\n" not in message


def test_missing_instances_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere.json: cannot read"):
        vocabulary_of([tmp_path / "nowhere.json"])


def test_unknown_category_id_is_an_error(tmp_path: Path) -> None:
    path = write_json(tmp_path / "inst.json", instances(DEMO_CATEGORIES, [(1, 9)]))
    with pytest.raises(ValueError, match="inst.json: annotation 1 has unknown category_id 9"):
        ground_truth_objects([path], {}, vocabulary_of([path]))


def test_extended_coco_synonyms_cover_exactly_the_80_categories(
        extended: ExtendedVocabulary) -> None:
    assert list(COCO_SYNONYMS) == COCO_80
    assert all(words[0] == name for name, words in COCO_SYNONYMS.items())
    assert extended.categories == tuple(COCO_SYNONYMS)
    assert all(1 <= len(k) <= 3 for k in extended.phrases)
    assert len(extended.non_objects) == len(NOT_OBJECT_PHRASES)


# --- extended vocabulary: singular ----------------------------------------------------

@pytest.mark.parametrize("word, expected", [
    ("dogs", "dog"), ("people", "person"), ("women", "woman"), ("men", "man"),
    ("children", "child"), ("mice", "mouse"), ("knives", "knife"), ("sheep", "sheep"),
    ("bus", "bus"), ("buses", "bus"), ("glass", "glass"), ("glasses", "glass"),
    ("grass", "grass"), ("dress", "dress"), ("species", "species"), ("skis", "ski"),
    ("ski", "ski"), ("skies", "sky"), ("tennis", "tennis"), ("cactus", "cactus"),
    ("is", "is"), ("this", "this"), ("s", "s"), ("tvs", "tv"), ("2", "2"),
])
def test_extended_singular(word: str, expected: str) -> None:
    assert extended_singular(word) == expected


# --- mentions ---------------------------------------------------------------------------

def test_extended_mentions_basic_with_plurals_and_offsets(extended: ExtendedVocabulary) -> None:
    caption = "A man riding a horse next to two dogs."
    mentions = extended.mentions(caption)
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
def test_extended_mentions_phrases(extended: ExtendedVocabulary, caption: str,
                          expected: list[tuple[str, str]]) -> None:
    assert found(extended, caption) == expected


@pytest.mark.parametrize("caption", [
    "Two Men on Motor-Bikes near a BUS stop, and a hot dog!",
    "Café: 2 dogs and a teddy bear   on the couch",
    "İstanbul: a cat, a dog's bowl",
])
def test_extended_mention_offsets_index_the_original_caption(extended: ExtendedVocabulary,
                                                    caption: str) -> None:
    mentions = extended.mentions(caption)
    assert mentions
    assert all(caption[m.start:m.end] == m.word for m in mentions)


def test_extended_from_categories_uses_own_synonyms_then_coco_then_name() -> None:
    vocab = ExtendedVocabulary.from_categories(
        [*DEMO_CATEGORIES, {"id": 4, "name": "dog"}, {"id": 5, "name": "widget"}])
    assert vocab.categories == ("circle", "square", "triangle", "dog", "widget")
    assert found(vocab, "a red ball and a blue box") == [("ball", "circle"), ("box", "square")]
    assert found(vocab, "discs, blocks and puppies") == [
        ("discs", "circle"), ("blocks", "square"), ("puppies", "dog")]
    assert found(vocab, "three widgets") == [("widgets", "widget")]


def test_extended_conflicting_synonyms_are_an_error() -> None:
    with pytest.raises(ValueError, match="'ball' names both 'circle' and 'sports ball'"):
        ExtendedVocabulary.from_categories(
            [DEMO_CATEGORIES[0], {"id": 2, "name": "sports ball"}])
