"""Every config key has its range checked when the config is loaded.

The keys are found by walking the config dataclasses, so a key added later is covered
without touching this file: each gets wrong values of its kind (wrong type, negative, zero,
absurdly large, NaN, empty or malformed strings) through `load_config(..., overrides)` and
must be refused with a one-line ConfigError naming it. Values a key legitimately accepts
(0 for a seed, both booleans, an empty optional path) are listed below with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from shared.config import RULES, Config, ConfigError, load_config, require_paths
from tests.conftest import DEMO_CONFIG, REPO


def _all_keys() -> dict[str, typing.Any]:
    """`section.key` -> declared type of every field of every config section."""
    keys = {}
    for section in dataclasses.fields(Config):
        cls = type(section.default_factory())  # type: ignore[misc]
        for name, hint in typing.get_type_hints(cls).items():
            keys[f"{section.name}.{name}"] = hint
    return keys


KEYS = _all_keys()

ZERO_OK = {
    "demo.seed": "a seed; 0 is as good as any",
    "fsgr.seed": "a seed; 0 is as good as any",
    "cluster.seed": "a seed; 0 is as good as any",
    "train.seed": "a seed; 0 is as good as any",
    "clip.num_workers": "0: decode images in the main process",
    "fsgr.warmup_steps": "0: no warm-up",
    "train.warmup_steps": "0: no warm-up",
    "memory.warmup_iterations": "0: first prototype refresh at step 0",
    "decoder.n_enc_layers": "0: the decoder attends the features directly",
    "memory.kmeans_max_points": "0: K-Means on every key",
    "train.shuffle_buffer": "0: shuffling within one batch's worth of rows",
    "scst.decay_every": "0: constant SCST learning rate",
    "scst.max_epochs": "0: SCST only scores its start checkpoint",
    "fsgr.contrastive_weight": "0: no contrastive loss",
    "clip.max_failed_fraction": "0: no unreadable image is tolerated",
    "fsgr.dropout": "0: no dropout",
    "demo.clip_object_text_rate": "0: the tiny CLIP sees only the reference captions",
    "demo.prior_strength": "0: no scene is repaired (categories as drawn)",
    "demo.counter_prior_fraction": "0: no forced counter-prior test scene",
    "demo.synonym_rate": "0: objects are always called by their category name",
    "decoder.dropout": "0: no dropout",
    "vg.seed": "a seed; 0 is as good as any",
    "vg.n_val": "0: no VG val images (regions captions)",
    "vg.n_test": "0: no VG test images (regions captions)",
    "vg.concept_objects": "0: VG concepts from attribute names only",
    "vg.concept_attributes": "0: VG concepts from object names only",
}
NO_UPPER_BOUND = {
    "train.grad_clip": "a huge maximum norm just means no clipping",
}
BOTH_BOOLEANS = {
    "fsgr.learn_logit_scale": "frozen or learned logit scale",
    "memory.self": "PMA memory on or off",
    "memory.cross": "feature-prototype memory on or off",
    "memory.init_from_cluster": "initial prototypes from `cluster` or not",
    "scst.enabled": "SCST after cross-entropy or not",
    "eval.spice": "SPICE needs Java + CoreNLP; either is a valid choice",
    "eval.clipscore": "CLIPScore on or off",
    "train.tensorboard": "TensorBoard scalars or not",
    "train.compile": "torch.compile of the decoder forward or eager",
}
EMPTY_OK = {
    "train.experiment": "empty: outputs directly under runs/<name>/",
    "fsgr.concept_list": "empty: concepts from caption word counts",
    "scst.init_checkpoint": "empty: SCST starts from train/best.pt",
    "data.captions_json": "empty list: references come from the Karpathy json",
    "data.instances_json": "empty list: no instance annotations, CHAIR skipped",
    "eval.subsets": "empty table: no named subsets of the split",
    "demo.prior_pairs": "empty list: no language prior in the demo scenes",
    "vg.coco_karpathy_json": "empty: the VG leakage guard is off (said on every prepare)",
}
MALFORMED = {  # one wrong but well-typed value of every string key
    "data.name": '"runs/coco"', "data.kind": '"imagenet"', "data.karpathy_json": '"  "',
    "data.image_root": '"  "', "data.run_root": '"  "', "demo.output_dir": '"  "',
    "demo.clip_model": '"  "', "clip.model": '"  "', "clip.pretrained": '"  "',
    "run.device": '"tpu"', "clip.precision": '"fp8"', "clip.patch_attention": '"sparse"',
    "clip.decode": '"tpu"',
    "store.format": '"parquet"', "store.dtype": '"int8"', "fsgr.concept_list": '"  "',
    "fsgr.prompt_template": '"a photo"', "decoder.visual_input": '"pixels"',
    "cluster.device": '"tpu"', "train.experiment": '"../elsewhere"',
    "train.precision": '"fp8"', "scst.init_checkpoint": '"  "', "scst.candidates": '"all"',
    "scst.baseline": '"median"', "scst.loss_normalization": '"sum"', "eval.split": '"dev"',
    "eval.chair_vocabulary": '"mine"', "eval.clipscore_clip": '"ViT-L-14"',
    "eval.clipscore_pretrained": '"  "',
    "data.captions_json": '[""]', "data.instances_json": '["  "]',
    "demo.prior_pairs": '["star"]',
    "vg.root": '"  "', "vg.caption_source": '"sentences"', "vg.coco_karpathy_json": '"  "',
    "vg.concepts_json": '"  "', "fsgr.concept_source": '"ram"',
}


def wrong_values(key: str, kind: typing.Any) -> list[str]:
    """TOML literals `key` must refuse."""
    if kind is bool:
        return ["1", '"yes"']
    if kind is int:
        values = ['"many"', "1.5", "true", "-1", str(10**12)]
        return values + ([] if key in ZERO_OK else ["0"])
    if kind is float:
        values = ['"fast"', "true", "-1.0", "nan"]
        values += [] if key in ZERO_OK else ["0.0"]
        return values + ([] if key in NO_UPPER_BOUND else ["1e12"])
    if kind is str or typing.get_origin(kind) is typing.Literal:
        return ["3", "true", MALFORMED[key]] + ([] if key in EMPTY_OK else ['""'])
    if kind == list[str]:
        return ["[1]", "3", MALFORMED[key]]
    if kind == dict[str, str]:
        return ['"ids.json"', '["ids.json"]', "{a = 1}", '{"a b" = "ids.json"}', '{a = ""}']
    raise AssertionError(f"{key}: no wrong values for type {kind}")


def refused(key: str, literal: str) -> str:
    """The one-line message of loading the demo config with `key=literal`."""
    with pytest.raises(ConfigError) as info:
        load_config(DEMO_CONFIG, [f"{key}={literal}"])
    message = str(info.value)
    assert "\n" not in message, message
    assert key in message, message
    return message


def test_every_key_has_a_rule_and_every_exception_is_a_key() -> None:
    assert set(RULES) == set(KEYS)
    for listed in (ZERO_OK, NO_UPPER_BOUND, BOTH_BOOLEANS, EMPTY_OK, MALFORMED):
        assert set(listed) <= set(KEYS), set(listed) - set(KEYS)
    assert {k for k, t in KEYS.items() if t is bool} == set(BOTH_BOOLEANS)
    assert {k for k, t in KEYS.items() if t is str or t == list[str]
            or typing.get_origin(t) is typing.Literal} == set(MALFORMED)


@pytest.mark.parametrize("key", sorted(KEYS))
def test_wrong_values_are_refused_naming_the_key(key: str) -> None:
    for literal in wrong_values(key, KEYS[key]):
        refused(key, literal)


@pytest.mark.parametrize("key", sorted(ZERO_OK))
def test_listed_zeros_are_accepted(key: str) -> None:
    assert load_config(DEMO_CONFIG, [f"{key}=0"]).value(key) == 0


@pytest.mark.parametrize("key", sorted(EMPTY_OK))
def test_listed_empty_values_are_accepted(key: str) -> None:
    empty = {list[str]: "[]", dict[str, str]: "{}"}.get(KEYS[key], '""')
    assert not load_config(DEMO_CONFIG, [f"{key}={empty}"]).value(key)


def test_message_names_value_and_what_is_allowed() -> None:
    message = refused("train.batch_size", "0")
    assert message == "config key 'train.batch_size' must be an integer in 1..100000, got 0"
    assert "got 1000000000000" in refused("memory.n_prototypes", str(10**12))
    assert "[0, 1)" in refused("decoder.dropout", "1.5")
    assert "plain folder name" in refused("data.name", '".."')
    message = refused("clip.pretrained", "")  # `--set clip.pretrained=$UNSET`
    assert '"openai"' in message and '"random"' in message


@pytest.mark.parametrize("sets, key", [
    (["decoder.d_model=130"], "decoder.d_model"),
    (["fsgr.d_model=130"], "fsgr.d_model"),
    (["memory.knn=65"], "memory.knn"),
    (["memory.kmeans_max_points=2", "memory.n_prototypes=4", "memory.knn=4"],
     "memory.kmeans_max_points"),
    (["scst.n_samples=1"], "scst.n_samples"),
    (["eval.max_length=23"], "eval.max_length"),
])
def test_relations_between_keys(sets: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        load_config(DEMO_CONFIG, sets)
    assert "\n" not in str(info.value)


def test_relations_accept_their_edges() -> None:
    config = load_config(DEMO_CONFIG, ["memory.knn=64", "memory.kmeans_max_points=64",
                                       "eval.max_length=22", "scst.n_samples=1",
                                       'scst.baseline="greedy"', "decoder.d_model=132"])
    assert (config.memory.knn, config.eval.max_length, config.decoder.d_model) == (64, 22, 132)


def test_require_paths_names_the_missing_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "d.json").write_text("{}")
    sets = [f"data.karpathy_json={json.dumps(str(tmp_path / 'd.json'))}",
            f"data.image_root={json.dumps(str(tmp_path / 'images'))}",
            "data.captions_json=[]", "data.instances_json=[]", "eval.subsets={}"]
    require_paths(load_config(DEMO_CONFIG, sets))  # the optional empty paths are skipped
    absent = json.dumps(str(tmp_path / "i.json"))
    missing = load_config(DEMO_CONFIG, [*sets, f"data.instances_json=[{absent}]"])
    with pytest.raises(ConfigError, match=r"'data\.instances_json' names no existing file: "
                                          r".*i\.json \(fix the path or make it with"):
        require_paths(missing)
    require_paths(missing, "data.karpathy_json", "data.image_root")
    no_list = load_config(DEMO_CONFIG, [*sets, 'fsgr.concept_list="absent.txt"'])
    with pytest.raises(ConfigError, match=r"'fsgr\.concept_list' .*absent\.txt \(fix the path\)$"):
        require_paths(no_list, "fsgr.concept_list")


def test_cli_bad_value_is_one_line_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shared.status", "--config", "configs/demo.toml",
         "--set", "train.batch_size=0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0] == ("error: config key 'train.batch_size' must be an integer in "
                        "1..100000, got 0")


def test_config_by_shipped_name_or_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: names resolve to the package's
    assert load_config("demo").data.kind == "demo"
    assert load_config("coco.toml").data.name == "coco"
    (tmp_path / "demo").write_text('[data]\nname = "mine"\n')  # an existing file wins
    assert load_config("demo").data.name == "mine"
    with pytest.raises(ConfigError, match=r"^config file not found: imagenet \(a path, or a "
                                          r"shipped config: coco, demo, flickr30k, nocaps, vg\)$"):
        load_config("imagenet")
    with pytest.raises(ConfigError, match=r"^config file not found: sub/demo.toml$"):
        load_config("sub/demo.toml")
