"""Staleness is transitive over the stage DAG, and manifests survive moving the run folder.

The DAG is the one `shared.stages` builds for the config, so a new stage or a new upstream
edge is covered automatically: every stage's outputs are materialised (a small file and a
real manifest), then for every (stage, upstream stage) pair a config key of the upstream
stage is changed and the downstream stage must refuse, naming a stale stage upstream of it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from shared.config import Config, load_config
from shared.manifest import (StageSpec, StaleInputError, decide, read_manifest,
                             require_current, write_manifest)
from shared.stages import all_stages, memory_banks_stage
from shared.status import stage_status
from tests.conftest import DEMO_CONFIG

# Two configs so that every optional edge of the DAG exists in one of them: cross-memory
# prototypes and CLIP-S (clip features feed training and scoring), activation prototypes
# feeding training, SCST on and off.
VARIANTS = {
    "pma_scst": [],
    "all_edges": ["memory.cross=true", "memory.init_from_cluster=true", "eval.clipscore=true",
                  'eval.clipscore_clip="run"', "scst.enabled=false"],
}


def _data_files(root: Path) -> list[str]:
    """Plain input files (Karpathy json, CLIP weights, annotations) and the overrides to them."""
    root.mkdir(parents=True, exist_ok=True)
    files = {"data.karpathy_json": "dataset.json", "clip.pretrained": "clip.pt"}
    for key, name in files.items():
        (root / name).write_text(json.dumps({"file": name}))
    for name in ("captions.json", "instances.json", "in_prior.json"):
        (root / name).write_text(json.dumps({"file": name}))
    return [*(f"{key}={json.dumps(str(root / name))}" for key, name in files.items()),
            f"eval.subsets={{in_prior={json.dumps(str(root / 'in_prior.json'))}}}",
            f"data.captions_json=[{json.dumps(str(root / 'captions.json'))}]",
            f"data.instances_json=[{json.dumps(str(root / 'instances.json'))}]",
            f"data.image_root={json.dumps(str(root))}"]


def _stages(config: Config) -> list[StageSpec]:
    """Every stage of the DAG (with the trainer's bank dump), upstream first."""
    ordered: dict[str, StageSpec] = {}

    def visit(spec: StageSpec) -> None:
        for upstream in spec.upstream:
            visit(upstream)
        ordered.setdefault(spec.name, spec)

    for spec in [memory_banks_stage(config), *all_stages(config)]:
        visit(spec)
    return list(ordered.values())


def _build_all(config: Config) -> None:
    """A stand-in output and a real manifest for every stage, in DAG order."""
    for spec in _stages(config):
        spec.output.parent.mkdir(parents=True, exist_ok=True)
        spec.output.write_text(spec.name)
        write_manifest(spec, config)


@pytest.fixture(params=sorted(VARIANTS))
def built(request, tmp_path) -> tuple[Config, list[str]]:
    sets = [*_data_files(tmp_path / "data"), f"data.run_root={json.dumps(str(tmp_path / 'runs'))}",
            *VARIANTS[request.param]]
    config = load_config(DEMO_CONFIG, sets)
    _build_all(config)
    return config, sets


def _closure(spec: StageSpec) -> dict[str, StageSpec]:
    """Every stage upstream of `spec` (transitively), by name."""
    found: dict[str, StageSpec] = {}
    for upstream in spec.upstream:
        found[upstream.name] = upstream
        found.update(_closure(upstream))
    return found


def _changed(value: Any) -> Any:
    """A different value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.5
    if isinstance(value, str):
        return value + "_changed"
    if isinstance(value, list):
        return [*value, "changed"]
    raise TypeError(value)


# Switches that change the DAG's shape rather than a stage's output.
_SWITCHES = {"scst.enabled", "memory.self", "memory.cross", "memory.init_from_cluster",
             "eval.clipscore"}


def _key_of(spec: StageSpec, config: Config) -> str:
    """A numeric config key the stage depends on (else a flag that is not a DAG switch):
    values of these can change without naming a missing file or an unknown choice."""
    keys = [key for dotted in spec.config_keys
            for key in ([dotted] if "." in dotted else
                        [f"{dotted}.{f.name}" for f in dataclasses.fields(getattr(config, dotted))])]
    values = {key: config.value(key) for key in keys}
    numeric = [k for k, v in values.items() if isinstance(v, (int, float))
               and not isinstance(v, bool)]
    flags = [k for k, v in values.items() if isinstance(v, bool) and k not in _SWITCHES]
    assert numeric or flags, f"{spec.name} has no key the test can change"
    return (numeric or flags)[0]


def _with(config: Config, key: str) -> Config:
    changed = copy.deepcopy(config)
    section, name = key.split(".")
    setattr(getattr(changed, section), name, _changed(getattr(getattr(changed, section), name)))
    return changed


def test_everything_is_current_after_the_build(built) -> None:
    config, _ = built
    for spec in _stages(config):
        assert decide(spec, config).up_to_date, spec.name
        assert stage_status(spec, config)[0] == "ok", spec.name


def test_a_changed_upstream_key_makes_every_downstream_stage_refuse(built) -> None:
    config, _ = built
    pairs = [(spec, upstream) for spec in _stages(config)
             for upstream in _closure(spec).values()]
    assert len(pairs) > 20
    for spec, upstream in pairs:
        key = _key_of(upstream, config)
        changed = _with(config, key)
        downstream = {s.name: s for s in _stages(changed)}[spec.name]
        with pytest.raises(StaleInputError) as err:
            decide(downstream, changed)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{spec.name}: its input ")
        named = message.removeprefix(f"{spec.name}: its input ").split(" ")[0]
        stale_stage = _closure(downstream)[named]  # KeyError: not upstream of the stage
        assert not decide(stale_stage, changed).up_to_date, (spec.name, key, message)
        assert "rebuild it with `python -m " in message, message
        with pytest.raises(StaleInputError):
            decide(downstream, changed, force=True)  # --force never runs on stale inputs
        with pytest.raises(StaleInputError):
            require_current(downstream, changed)
        assert stage_status(downstream, changed)[0] == "stale", (spec.name, key)


def test_the_first_stale_stage_is_the_one_nearest_the_start(built) -> None:
    """`clip.model` feeds extract.clip and extract.concepts: evaluation names one of those
    (the stages to rebuild first), not the FSGR features in between."""
    config, _ = built
    changed = _with(config, "clip.model")
    captions = {s.name: s for s in _stages(changed)}["evaluate.captions"]
    with pytest.raises(StaleInputError, match=r"its input extract\.(clip|concepts) .*"
                                              r"config changed \(clip\.model"):
        decide(captions, changed)


def test_moving_the_run_folder_keeps_every_stage_current(built, tmp_path) -> None:
    config, sets = built
    moved = tmp_path / "elsewhere" / "runs"
    shutil.move(config.data.run_root, moved)
    relocated = load_config(DEMO_CONFIG, [*sets, f"data.run_root={json.dumps(str(moved))}"])
    for spec in _stages(relocated):
        assert decide(spec, relocated).up_to_date, spec.name
        manifest = read_manifest(spec.output)
        assert str(tmp_path / "runs") not in json.dumps(manifest["inputs"]), spec.name


def test_a_changed_input_file_makes_its_stages_and_everything_below_stale(built) -> None:
    config, _ = built
    Path(config.data.karpathy_json).write_text(json.dumps({"file": "another dataset"}))
    assert not decide(_stages(config)[0], config).up_to_date
    report = {s.name: s for s in _stages(config)}["evaluate.report"]
    with pytest.raises(StaleInputError, match="input changed"):
        decide(report, config)


def test_a_rebuilt_stage_makes_everything_below_it_stale(built) -> None:
    """A re-run with the same config and inputs (`--force`, e.g. after a code change) may write
    other content: every stage downstream of it must re-run, while the identity of the re-run
    stage stays what its config and inputs make it (an interrupted build resumes under it)."""
    config, _ = built
    stages = _stages(config)
    checked = 0
    for rebuilt in stages:
        below = [s for s in stages if rebuilt.name in _closure(s)]
        before = read_manifest(rebuilt.output)
        write_manifest(rebuilt, config)  # what run_stage does after a --force build
        after = read_manifest(rebuilt.output)
        assert after["identity"] == before["identity"] and after["build"] != before["build"]
        assert decide(rebuilt, config).up_to_date
        for spec in below:
            between = [u for u in _closure(spec).values() if rebuilt.name in _closure(u)]
            if between:  # a stage in between is stale first: it is the one named
                with pytest.raises(StaleInputError, match=r" is stale \(input changed \("):
                    decide(spec, config)
            else:
                decision = decide(spec, config)
                assert not decision.up_to_date, (rebuilt.name, spec.name)
                assert decision.reason == f"input changed ({rebuilt.name})", decision.reason
            checked += 1
        _build_all(config)  # everything current again for the next stage
    assert checked > 20
