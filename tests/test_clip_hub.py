"""`clip.pretrained` as open_clip's "hf-hub:org/repo" (and "local-dir:/folder") names, without
network: a fake Hugging Face cache holding the repo's tiny CLIP, one-line failures when
weights are neither cached nor downloadable, and hub names as names in stage identities."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import open_clip
import pytest
import safetensors.torch
import torch
from huggingface_hub import constants as hub
from huggingface_hub import errors as hf_errors
from open_clip.push_to_hf_hub import save_config_for_hf

from shared.clip_model import (CheckpointError, create_clip, is_checkpoint_path,
                               pretrained_files, register_model_configs)
from shared.manifest import current_state
from shared.stages import clip_stage, concepts_stage
from tests.conftest import TINY_MODEL, make_config
from tests.test_clip_weights import UNREACHABLE, one_line, same_weights

REPO_ID = "test-org/tiny-clip"
HUB_NAME = f"hf-hub:{REPO_ID}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_model_config() -> dict:
    register_model_configs()
    return open_clip.get_model_config(TINY_MODEL)


def write_repo_files(folder: Path, model: torch.nn.Module, model_cfg: dict,
                     weights: str = "safetensors") -> None:
    """The files of an open_clip hub repo, written with open_clip's own config writer."""
    folder.mkdir(parents=True, exist_ok=True)
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=model_cfg)
    if weights == "safetensors":
        safetensors.torch.save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    elif weights == "bin":
        torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")


def put_in_hub_cache(cache: Path, repo_id: str, files: Path) -> Path:
    """`files/*` as huggingface_hub's cache holds a downloaded repo: blobs named by hash,
    snapshots/<commit>/ linking to them, refs/main naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in files.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.write_bytes(file.read_bytes())
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache in tmp_path, HF_HUB_OFFLINE=1 and an endpoint that refuses
    connections. huggingface_hub reads the variables at import, so its constants are set too."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "ENDPOINT", UNREACHABLE)
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return cache


@pytest.fixture
def saved_model() -> torch.nn.Module:
    """Random tiny CLIP weights (seed 7), different from create_clip's default "random"."""
    return create_clip(TINY_MODEL, "random", random_seed=7).model


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_hub_name_loads_the_cached_repo_offline(offline_hub: Path, tmp_path: Path,
                                                saved_model: torch.nn.Module,
                                                weights: str) -> None:
    write_repo_files(tmp_path / "repo", saved_model, tiny_model_config(), weights)
    put_in_hub_cache(offline_hub, REPO_ID, tmp_path / "repo")
    bundle = create_clip(TINY_MODEL, HUB_NAME)
    assert same_weights(bundle.model, saved_model)
    assert not same_weights(bundle.model, create_clip(TINY_MODEL, "random").model)
    assert bundle.weights == HUB_NAME and bundle.name == TINY_MODEL
    assert not bundle.model.training
    assert hub.HF_HUB_OFFLINE is True  # the setting is left as it was
    with torch.no_grad():
        assert bundle.model.visual(torch.zeros(1, 3, 64, 64)).shape == (1, bundle.embed_dim)


def test_hub_name_loads_while_online_mode_without_any_request(
        offline_hub: Path, tmp_path: Path, saved_model: torch.nn.Module,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in offline mode: cached files load without opening a connection."""
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    write_repo_files(tmp_path / "repo", saved_model, tiny_model_config())
    put_in_hub_cache(offline_hub, REPO_ID, tmp_path / "repo")
    assert same_weights(create_clip(TINY_MODEL, HUB_NAME).model, saved_model)
    assert hub.HF_HUB_OFFLINE is False


def test_local_dir_loads_and_its_files_are_stage_inputs(
        tmp_path: Path, saved_model: torch.nn.Module) -> None:
    folder = tmp_path / "repo"
    write_repo_files(folder, saved_model, tiny_model_config())
    name = f"local-dir:{folder}"
    assert same_weights(create_clip(TINY_MODEL, name).model, saved_model)
    assert pretrained_files(name) == [folder / "open_clip_config.json",
                                      folder / "open_clip_model.safetensors"]


def test_local_dir_without_weights_is_one_line(tmp_path: Path,
                                               saved_model: torch.nn.Module) -> None:
    """open_clip itself would warn and return random weights."""
    folder = tmp_path / "repo"
    write_repo_files(folder, saved_model, tiny_model_config(), weights="none")
    with pytest.raises(CheckpointError) as err:
        create_clip(TINY_MODEL, f"local-dir:{folder}")
    assert f"CLIP folder {folder} (clip.pretrained) has no weights file" in one_line(err)
    with pytest.raises(CheckpointError, match="CLIP folder not found"):
        create_clip(TINY_MODEL, f"local-dir:{tmp_path / 'absent'}")


def test_hub_repo_of_another_architecture_names_both(offline_hub: Path, tmp_path: Path,
                                                     saved_model: torch.nn.Module) -> None:
    other = tiny_model_config()
    other["vision_cfg"]["patch_size"] = 16
    write_repo_files(tmp_path / "repo", saved_model, other)
    put_in_hub_cache(offline_hub, REPO_ID, tmp_path / "repo")
    with pytest.raises(CheckpointError) as err:
        create_clip(TINY_MODEL, HUB_NAME)
    assert one_line(err) == (
        f"clip.pretrained '{HUB_NAME}' is not a '{TINY_MODEL}' (clip.model): "
        "vision_cfg.patch_size is [16, 16] in the repo's config but [8, 8] in clip.model; "
        "set clip.model to the repo's architecture")


def test_hub_config_with_defaults_spelled_out_is_the_same_architecture(
        offline_hub: Path, tmp_path: Path, saved_model: torch.nn.Module) -> None:
    cfg = tiny_model_config()
    cfg["vision_cfg"].update(mlp_ratio=4.0, patch_size=[8, 8])
    cfg["text_cfg"]["hf_tokenizer_name"] = None
    cfg["quick_gelu"] = False
    write_repo_files(tmp_path / "repo", saved_model, cfg)
    put_in_hub_cache(offline_hub, REPO_ID, tmp_path / "repo")
    assert same_weights(create_clip(TINY_MODEL, HUB_NAME).model, saved_model)


def test_hub_weights_of_other_shapes_are_one_line(offline_hub: Path, tmp_path: Path,
                                                  saved_model: torch.nn.Module) -> None:
    write_repo_files(tmp_path / "repo", saved_model, tiny_model_config())
    state = saved_model.state_dict()
    state["visual.proj"] = torch.zeros(3, 3)
    safetensors.torch.save_file(state, tmp_path / "repo" / "open_clip_model.safetensors")
    put_in_hub_cache(offline_hub, REPO_ID, tmp_path / "repo")
    with pytest.raises(CheckpointError) as err:
        create_clip(TINY_MODEL, HUB_NAME)
    message = one_line(err)
    assert message.startswith(f"CLIP weights of clip.pretrained '{HUB_NAME}' (")
    assert message.endswith(f"do not fit clip.model '{TINY_MODEL}': visual.proj is [3, 3] in "
                            "the file but [128, 128] in the model")


def test_hub_name_as_clip_model_says_where_it_goes() -> None:
    with pytest.raises(CheckpointError) as err:
        create_clip(HUB_NAME, "random")
    assert "a hub name goes in clip.pretrained" in one_line(err)


# ----------------------------------------------------------------------------- offline


ADVICE = "download them where there is network"


def test_uncached_tag_offline_is_one_line_with_advice(offline_hub: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        create_clip("ViT-B-32", "openai")
    message = one_line(err)
    assert message.startswith("CLIP weights 'openai' for ViT-B-32 (clip.pretrained) are not in "
                              "the local cache and HF_HUB_OFFLINE is set: ")
    assert ADVICE in message and "set clip.pretrained to a local checkpoint file" in message


def test_uncached_hub_name_offline_is_one_line_with_advice(offline_hub: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        create_clip(TINY_MODEL, "hf-hub:test-org/absent")
    message = one_line(err)
    assert message.startswith("CLIP weights 'hf-hub:test-org/absent' (clip.pretrained) are not "
                              "in the local cache and HF_HUB_OFFLINE is set: ")
    assert "open_clip.create_model('hf-hub:test-org/absent')" in message
    assert ADVICE in message and "set clip.pretrained to a local checkpoint file" in message


def test_uncached_hub_name_with_hub_unreachable(offline_hub: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    with pytest.raises(CheckpointError) as err:
        create_clip(TINY_MODEL, "hf-hub:test-org/absent")
    message = one_line(err)
    assert message.startswith("CLIP weights 'hf-hub:test-org/absent' (clip.pretrained) are not "
                              "in the local cache and 127.0.0.1:9 cannot be reached (")
    assert ADVICE in message


def test_cached_config_without_weights_is_not_random_weights(
        offline_hub: Path, tmp_path: Path, saved_model: torch.nn.Module) -> None:
    """open_clip would only warn when the weights are missing and return a random model."""
    write_repo_files(tmp_path / "repo", saved_model, tiny_model_config(), weights="none")
    put_in_hub_cache(offline_hub, REPO_ID, tmp_path / "repo")
    with pytest.raises(CheckpointError, match="not in the local cache and HF_HUB_OFFLINE"):
        create_clip(TINY_MODEL, HUB_NAME)


# ----------------------------------------------------------------------------- names vs files


def test_hub_names_are_not_checkpoint_paths(tiny_checkpoint: Path) -> None:
    assert not is_checkpoint_path("hf-hub:org/repo")
    assert not is_checkpoint_path("local-dir:/some/folder")
    assert is_checkpoint_path(str(tiny_checkpoint)) and is_checkpoint_path("w/clip.pt")
    assert pretrained_files("hf-hub:org/repo") == [] and pretrained_files("openai") == []
    assert pretrained_files(str(tiny_checkpoint)) == [tiny_checkpoint]


def test_local_file_still_loads(tiny_checkpoint: Path) -> None:
    bundle = create_clip(TINY_MODEL, str(tiny_checkpoint))
    assert bundle.weights == str(tiny_checkpoint)
    assert same_weights(bundle.model, create_clip(TINY_MODEL, "random").model)


def test_hub_name_is_a_name_in_stage_identities(tmp_path: Path, image_dataset: Path,
                                                tiny_checkpoint: Path) -> None:
    config = make_config(tmp_path / "runs", image_dataset, tiny_checkpoint,
                         f"clip.pretrained={json.dumps(HUB_NAME)}")
    for spec in (clip_stage(config), concepts_stage(config)):
        assert not any("hf-hub" in str(p) for p in spec.inputs), spec.inputs
        state = current_state(spec, config)  # no "input not found: hf-hub:..."
        assert state["config"]["clip.pretrained"] == HUB_NAME
    with_file = make_config(tmp_path / "runs", image_dataset, tiny_checkpoint)
    assert tiny_checkpoint in clip_stage(with_file).inputs


@pytest.mark.parametrize("error, expected", [
    (hf_errors.LocalEntryNotFoundError("x"), "the hub cannot be reached and it is not in the "
                                             "local cache"),
    (hf_errors.EntryNotFoundError("x"), "the repo has no such file"),
])
def test_failed_download_is_one_line(offline_hub: Path, monkeypatch: pytest.MonkeyPatch,
                                     error: Exception, expected: str) -> None:
    """The probe passes but the download fails (stubbed: no request is made)."""
    import open_clip.pretrained
    import shared.clip_model as clip_model

    def refuse(**kwargs: object) -> str:
        raise error

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(clip_model, "unreachable", lambda url, timeout=0.0: "")
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refuse)
    with pytest.raises(CheckpointError) as err:
        create_clip(TINY_MODEL, "hf-hub:test-org/absent")
    assert one_line(err) == ("could not get the open_clip_config.json of clip.pretrained "
                             f"'hf-hub:test-org/absent': {expected}")


@pytest.mark.parametrize("name", ["hf-hub:", "hf-hub:a/b/c", "hf-hub:bad repo!"])
def test_malformed_hub_names_are_one_line(name: str) -> None:
    with pytest.raises(CheckpointError) as err:
        create_clip(TINY_MODEL, name)
    assert f"clip.pretrained '{name}'" in one_line(err)
