"""The demo's controlled language prior: paired categories, counter-prior test scenes, subsets."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shared.config import Config, ConfigError, DemoConfig, load_config
from shared.datasets.demo_captions import SYNONYMS, scene_captions
from shared.datasets.demo_scenes import CATEGORIES, ScenePrior, sample_scene, scene_prior
from shared.datasets.demo_stage import demo_overrides
from shared.datasets.demo_writer import DemoPaths, generate_dataset
from shared.vocabulary import tokenize

ROOT = Path(__file__).resolve().parents[1]
PAIRS = (("star", "heart"), ("cross", "diamond"))


def _config(root: Path, *extra: str) -> Config:
    return load_config(ROOT / "configs" / "demo.toml", [
        *demo_overrides(root), "demo.n_train=200", "demo.n_val=10", "demo.n_test=60",
        'demo.prior_pairs=["star+heart", "cross+diamond"]', *extra])


def _categories(prior: ScenePrior, n: int, seed: int = 0, counter: bool = False
                ) -> list[list[str]]:
    """Categories of n scenes, each drawn from its own generator (as the dataset does)."""
    return [[o.category for o in sample_scene(np.random.default_rng([seed, i]), 64, prior,
                                              counter).objects] for i in range(n)]


def test_full_strength_never_shows_a_member_alone() -> None:
    prior = ScenePrior(PAIRS, 1.0)
    scenes = _categories(prior, 600)
    assert not any(prior.lone_members(cats) for cats in scenes)
    with_star = [cats for cats in scenes if "star" in cats]
    assert with_star and all("heart" in cats for cats in with_star)


def test_zero_strength_leaves_scenes_as_drawn() -> None:
    drawn = _categories(ScenePrior(), 300, seed=3)
    assert _categories(ScenePrior(PAIRS, 0.0), 300, seed=3) == drawn
    prior = ScenePrior(PAIRS, 0.0)
    assert sum(bool(prior.lone_members(cats)) for cats in drawn) > 50  # the prior is not free


def test_strength_sets_the_share_of_lone_members() -> None:
    weak, strong = ScenePrior(PAIRS, 0.5), ScenePrior(PAIRS, 0.95)
    lone_weak = sum(bool(weak.lone_members(c)) for c in _categories(weak, 1000, seed=1))
    lone_strong = sum(bool(strong.lone_members(c)) for c in _categories(strong, 1000, seed=1))
    assert lone_strong < 0.25 * lone_weak


def test_counter_prior_scenes_break_exactly_one_pair() -> None:
    prior = ScenePrior(PAIRS, 0.95)
    for cats in _categories(prior, 400, seed=2, counter=True):
        lone = prior.lone_members(cats)
        assert len(lone) == 1, cats
        assert prior.partner(lone[0]) not in cats


def test_synonym_rate_picks_the_noun() -> None:
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, 64) for _ in range(80)]
    for rate, allowed in ((0.0, lambda c: SYNONYMS[c][:1]), (1.0, lambda c: SYNONYMS[c][1:]
                                                             or SYNONYMS[c][:1])):
        for scene in scenes:
            words = {w for cap in scene_captions(scene, rng, synonym_rate=rate)
                     for w in tokenize(cap)}
            for obj in scene.objects:
                nouns = words & set(SYNONYMS[obj.category])
                assert nouns and nouns <= set(allowed(obj.category)), (rate, obj.category, nouns)


def test_generated_subsets_partition_the_test_split(tmp_path: Path) -> None:
    config = _config(tmp_path / "demo", "demo.prior_strength=1.0")
    summary = generate_dataset(config.demo)
    paths = DemoPaths(tmp_path / "demo")
    subsets = {name: json.loads(paths.subset(name).read_text())
               for name in ("in_prior", "counter_prior")}
    karpathy = json.loads(paths.karpathy_json.read_text())["images"]
    test_ids = {e["cocoid"] for e in karpathy if e["split"] == "test"}
    assert set(subsets["in_prior"]) | set(subsets["counter_prior"]) == test_ids
    assert not set(subsets["in_prior"]) & set(subsets["counter_prior"])
    assert len(subsets["counter_prior"]) == round(0.3 * 60)  # strength 1: only the forced ones

    instances = json.loads(paths.instances_json.read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    held: dict[int, list[str]] = {}
    for ann in instances["annotations"]:
        held.setdefault(ann["image_id"], []).append(names[ann["category_id"]])
    prior = scene_prior(config.demo)
    for image_id in subsets["counter_prior"]:
        assert prior.lone_members(held[image_id])
    for image_id in subsets["in_prior"]:
        assert not prior.lone_members(held[image_id])
    train_ids = {e["cocoid"] for e in karpathy if e["split"] in ("train", "restval")}
    assert not any(prior.lone_members(held[i]) for i in train_ids if i in held)

    shares = summary.prior["cooccurrence"]
    assert set(shares) == {"heart | star", "star | heart", "diamond | cross", "cross | diamond"}
    assert all(v["share_with_partner"] == 1.0 and v["train_scenes_with_member"] > 0
               for v in shares.values())
    assert summary.prior["test_subsets"] == {k: len(v) for k, v in subsets.items()}


def test_training_captions_carry_the_prior(tmp_path: Path) -> None:
    """The words the decoder learns from: 'star' nearly always comes with 'heart'."""
    generate_dataset(_config(tmp_path / "demo").demo)
    paths = DemoPaths(tmp_path / "demo")
    karpathy = json.loads(paths.karpathy_json.read_text())["images"]
    together = Counter()
    for entry in karpathy:
        if entry["split"] not in ("train", "restval"):
            continue
        words = {w for s in entry["sentences"] for w in s["tokens"]}
        if "star" in words:
            together["star"] += 1
            together["both"] += bool(words & set(SYNONYMS["heart"]))
    assert together["star"] > 20 and together["both"] / together["star"] >= 0.9


def test_without_pairs_no_subsets_are_written(tmp_path: Path) -> None:
    config = _config(tmp_path / "demo", "demo.prior_pairs=[]")
    summary = generate_dataset(config.demo)
    assert summary.prior == {}
    assert not (tmp_path / "demo" / "subsets").exists()


@pytest.mark.parametrize("pairs, message", [
    ('["star+moon"]', "'star+moon' is not two different categories"),
    ('["star+star"]', "'star+star' is not two different categories"),
    ('["star+heart", "heart+cross"]', "'heart' is in two pairs"),
])
def test_bad_pairs_are_one_line_errors(pairs: str, message: str) -> None:
    demo = load_config(ROOT / "configs" / "demo.toml", [f"demo.prior_pairs={pairs}"]).demo
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        scene_prior(demo)
    assert "\n" not in str(err.value)


def test_every_category_paired_is_refused() -> None:
    pairs = [f"{a}+{b}" for a, b in zip(CATEGORIES[0::2], CATEGORIES[1::2])]
    with pytest.raises(ConfigError, match="at least one category outside"):
        scene_prior(DemoConfig(prior_pairs=pairs))
