"""Config loading: every shipped config is valid; bad keys, types and overrides are named."""

from pathlib import Path

import pytest

from shared.config import ConfigError, load_config, parse_override
from tests.conftest import REPO

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    config = load_config(path)
    assert config.data.name == path.stem
    assert config.run_dir == Path("runs") / path.stem


def test_defaults_follow_the_papers() -> None:
    config = load_config(CONFIGS[0])
    assert (config.fsgr.top_k, config.fsgr.n_layers, config.fsgr.d_model) == (20, 2, 512)
    assert config.fsgr.contrastive_temperature == 0.07 and config.fsgr.contrastive_weight == 0.25
    assert (config.eval.beam_size, config.eval.max_length) == (5, 20)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'clip\.modle'"):
        load_config(_write(tmp_path, '[clip]\nmodle = "ViT-B-16"\n'))


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config section 'clipp'"):
        load_config(_write(tmp_path, '[clipp]\nmodel = "x"\n'))


@pytest.mark.parametrize("text, key", [
    ('[clip]\nbatch_size = "big"\n', "clip.batch_size"),
    ("[clip]\nbatch_size = 1.5\n", "clip.batch_size"),
    ("[memory]\nself = 1\n", "memory.self"),
    ("[train]\nlr = true\n", "train.lr"),
    ("[data]\ncaptions_json = [1, 2]\n", r"data.captions_json\[0\]"),
    ('[store]\nformat = "parquet"\n', "store.format"),
])
def test_wrong_type_is_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(_write(tmp_path, text))


def test_choices_are_literal_types_and_moved_keys_name_their_new_place(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config key 'scst\.baseline' must be one of mean, "
                                          r"mean_others, greedy, got 'median'$"):
        load_config(_write(tmp_path, '[scst]\nbaseline = "median"\n'))
    with pytest.raises(ConfigError, match=r"config key 'clip\.device' is now 'run\.device'$"):
        load_config(_write(tmp_path, '[clip]\ndevice = "cpu"\n'))
    assert load_config(_write(tmp_path, '[run]\ndevice = "cpu"\n')).run.device == "cpu"


def test_int_is_accepted_for_float(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "[train]\nlr = 1\n")).train.lr == 1.0


def test_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, '[clip]\nmodel = "ViT-L-14"\n')
    config = load_config(path, ["clip.model=ViT-B-16", "clip.batch_size=8", "memory.cross=true",
                                'data.karpathy_json="x/y.json"', "train.lr=1e-3"])
    assert config.clip.model == "ViT-B-16" and config.clip.batch_size == 8
    assert config.memory.cross is True and config.train.lr == 1e-3
    assert config.data.karpathy_json == "x/y.json"
    with pytest.raises(ConfigError, match="--set: unknown config key 'clip.nope'"):
        load_config(path, ["clip.nope=1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("clipmodel")


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[clip\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_experiment_names_separate_decoder_outputs() -> None:
    from shared.stages import (captions_stage, cluster_activations_stage, clip_stage,
                               experiment_dir, train_stage)
    base = load_config(REPO / "configs" / "demo.toml", [])
    named = load_config(REPO / "configs" / "demo.toml", ['train.experiment="pma-fsgr"'])
    assert experiment_dir(base) == base.run_dir
    assert experiment_dir(named) == named.run_dir / "experiments" / "pma-fsgr"
    for stage in (train_stage, cluster_activations_stage, captions_stage):
        assert stage(named).output.is_relative_to(experiment_dir(named))
        assert not stage(base).output.is_relative_to(base.run_dir / "experiments")
    assert clip_stage(named).output == clip_stage(base).output  # caches are shared
    with pytest.raises(ConfigError, match=r"'train\.experiment' must be a plain folder name"):
        load_config(REPO / "configs" / "demo.toml", ['train.experiment="../elsewhere"'])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_name_their_dataset_kind(path: Path) -> None:
    """`data.kind` says what `prepare` does; `data.name` only names the run and may change."""
    assert load_config(path).data.kind == path.stem
    renamed = load_config(path, ['data.name="small_run"'])
    assert renamed.data.kind == path.stem and renamed.run_dir == Path("runs") / "small_run"


def test_added_keys_stay_out_of_identities_at_their_default() -> None:
    """Keys added after outputs were built (`ADDED_KEYS`) do not make those outputs stale:
    at their default they are not part of what a stage's identity selects."""
    from shared.stages import CLIP_KEYS, FIT_KEYS
    config = load_config(REPO / "configs" / "demo.toml")
    for keys, added in ((["train"], "train.compile"), (CLIP_KEYS, "clip.decode"),
                        (FIT_KEYS, "fsgr.concept_source")):
        assert added not in config.select(keys)
    changed = load_config(REPO / "configs" / "demo.toml",
                          ["train.compile=true", 'clip.decode="gpu"', 'fsgr.concept_source="vg"',
                           'vg.concepts_json="x.json"'])
    assert changed.select(["train"])["train.compile"] is True
    assert changed.select(CLIP_KEYS)["clip.decode"] == "gpu"
    assert changed.select(FIT_KEYS)["fsgr.concept_source"] == "vg"
