"""Where CLIP weights come from: "random" only when asked (and the same everywhere), local
files that are not checkpoints or do not fit `clip.model`, and hub tags without network."""

from __future__ import annotations

import shutil
from pathlib import Path

import open_clip
import pytest
import torch
from huggingface_hub import constants as hub

from shared.clip_model import CheckpointError, create_clip, save_clip_weights
from shared.config import ConfigError
from tests.conftest import TINY_MODEL

UNREACHABLE = "http://127.0.0.1:9"   # the discard port: connection refused at once


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert "\n" not in message and "weights_only" not in message, message
    return message


def test_random_weights_are_the_same_in_every_call_and_recorded() -> None:
    before = torch.get_rng_state()
    first = create_clip(TINY_MODEL, "random")
    torch.rand(3)  # whatever the global RNG did in between
    second = create_clip(TINY_MODEL, "random")
    assert same_weights(first.model, second.model)
    assert first.weights == "random"
    other = create_clip(TINY_MODEL, "random", random_seed=1)
    assert not same_weights(first.model, other.model)
    torch.set_rng_state(before)
    create_clip(TINY_MODEL, "random")
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left alone


def test_empty_pretrained_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        create_clip(TINY_MODEL, "")
    message = one_line(err)
    assert "clip.pretrained" in message and '"openai"' in message and '"random"' in message


def test_checkpoint_file_loads_and_is_recorded(tiny_checkpoint: Path) -> None:
    bundle = create_clip(TINY_MODEL, str(tiny_checkpoint))
    assert bundle.weights == str(tiny_checkpoint)
    # conftest saved create_clip(TINY_MODEL, "random")
    assert same_weights(bundle.model, create_clip(TINY_MODEL, "random").model)


def _corrupt(tmp_path: Path, name: str, tiny_checkpoint: Path) -> Path:
    """A checkpoint-like file that is not a usable tiny CLIP checkpoint."""
    path = tmp_path / f"{name}.pt"
    raw = tiny_checkpoint.read_bytes()
    state = torch.load(tiny_checkpoint, weights_only=True)
    if name == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif name == "text":
        path.write_text("these are not weights\n")
    elif name == "empty":
        path.write_bytes(b"")
    elif name == "pickled_module":
        torch.save(torch.nn.Linear(2, 2), path)
    elif name == "list":
        torch.save([1, 2], path)
    elif name == "other_shape":
        state["visual.conv1.weight"] = torch.zeros(4, 3, 8, 8)
        torch.save(state, path)
    elif name == "missing_and_extra":
        del state["visual.proj"]
        state["head.extra"] = torch.zeros(1)
        torch.save(state, path)
    return path


@pytest.mark.parametrize("name, expected", [
    ("truncated", "is not a readable checkpoint (truncated or corrupt?)"),
    ("text", "is not a"),
    ("empty", "is an empty file"),
    ("pickled_module", "holds Python objects besides tensors; save a plain state dict"),
    ("list", "holds a list, not a state dict of tensors"),
    ("other_shape", f"does not fit clip.model '{TINY_MODEL}': visual.conv1.weight is "
                    "[4, 3, 8, 8] in the file but [128, 3, 8, 8] in the model"),
    ("missing_and_extra", "1 tensor of the model missing (first: visual.proj); 1 tensor not "
                          "in the model (first: head.extra)"),
])
def test_bad_checkpoint_files_are_one_line_naming_the_file(
        tmp_path: Path, tiny_checkpoint: Path, name: str, expected: str) -> None:
    path = _corrupt(tmp_path, name, tiny_checkpoint)
    with pytest.raises(CheckpointError) as err:
        create_clip(TINY_MODEL, str(path))
    message = one_line(err)
    assert message.startswith(f"CLIP checkpoint {path} (clip.pretrained) ")
    assert expected in message


def test_missing_checkpoint_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"CLIP checkpoint not found: .*absent\.pt"):
        create_clip(TINY_MODEL, str(tmp_path / "absent.pt"))


def test_unknown_tag_lists_the_model_tags() -> None:
    with pytest.raises(CheckpointError) as err:
        create_clip(TINY_MODEL, "openai")
    assert f"neither a file nor a pretrained tag of clip.model '{TINY_MODEL}'" in one_line(err)
    with pytest.raises(CheckpointError, match=r"\(its tags: openai, yfcc15m, cc12m\)"):
        create_clip("RN50", "nosuchtag")


@pytest.fixture
def empty_offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache and a hub endpoint that refuses connections."""
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "ENDPOINT", UNREACHABLE)
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "hub"


def test_uncached_hub_weights_fail_at_once_without_network(empty_offline_hub: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        create_clip("RN50", "openai")
    message = one_line(err)
    assert message.startswith("CLIP weights 'openai' for RN50 (clip.pretrained) are not in the "
                              "local cache and 127.0.0.1:9 cannot be reached")
    assert "set clip.pretrained to a local checkpoint file" in message


def test_uncached_hub_weights_in_offline_mode(empty_offline_hub: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="not in the local cache and HF_HUB_OFFLINE is set"):
        create_clip("RN50", "openai")


def test_cached_hub_weights_load_without_network(empty_offline_hub: Path, tiny_checkpoint: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A tag whose weights are in the HF cache loads with the hub unreachable."""
    tag = open_clip.pretrained._pcfg(hf_hub="local/tiny-clip/", quick_gelu=True)  # as "openai"
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_MODEL, {"cachedtag": tag})
    commit = "0" * 40
    repo = empty_offline_hub / "models--local--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    shutil.copy(tiny_checkpoint, repo / "snapshots" / commit / "open_clip_pytorch_model.bin")
    bundle = create_clip(TINY_MODEL, "cachedtag")
    assert bundle.weights == "cachedtag"
    assert same_weights(bundle.model, create_clip(TINY_MODEL, str(tiny_checkpoint)).model)
    assert hub.HF_HUB_OFFLINE is False  # offline only while loading
    activations = {type(m).__name__ for m in bundle.model.modules()}
    assert "QuickGELU" in activations and "GELU" not in activations  # the tag's activation


def test_saved_weights_round_trip(tmp_path: Path) -> None:
    bundle = create_clip(TINY_MODEL, "random", random_seed=3)
    save_clip_weights(bundle.model, tmp_path / "w.pt")
    assert same_weights(bundle.model, create_clip(TINY_MODEL, str(tmp_path / "w.pt")).model)
