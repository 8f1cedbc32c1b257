"""One factory for CLIP models: open_clip names (incl. the repo's own model configs) + weights.

`pretrained` (config `clip.pretrained`) is one of
- an open_clip tag (e.g. "openai"): loaded from the open_clip / Hugging Face cache without any
  network access when the weights are there, downloaded otherwise; when they are not cached
  and the download host does not answer within `PROBE_TIMEOUT_S`, it fails at once. The
  model gets the tag's activation (QuickGELU for "openai", as those weights were trained
  with; open_clip itself only warns when `ViT-L-14` is given them);
- a path to a local checkpoint file (a state dict, loaded with `weights_only=True`); a file
  that is not a readable checkpoint, or whose tensors do not fit the model, is named in a
  one-line `CheckpointError` with the first mismatch;
- an open_clip hub name "hf-hub:org/repo" (or "local-dir:/folder" holding the same files):
  the repo's own `open_clip_config.json` (architecture + preprocessing) and its weights
  (`open_clip_model.safetensors` or `open_clip_pytorch_model.bin`), loaded through open_clip's
  hf-hub schema. `clip.model` still names the architecture (it names the tokenizer, the
  caches and the expected shapes): it must be an open_clip model name whose config agrees
  with the repo's (embedding width, both towers' sizes, patch and image size, tokenizer),
  else a one-line `CheckpointError` names the first field that differs, e.g. clip.model =
  "ViT-B-32" with pretrained = "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K". The repo's
  config decides the activation (QuickGELU) and the image normalisation. Cache and network
  behave as for tags: the config is checked before the weights are downloaded, and a repo
  whose weights cannot be had fails instead of giving open_clip's silent random weights;
- "random": random weights, the same in every process (seeded by `random_seed` without
  touching the global torch RNG). "" is refused: an unset variable must not silently give
  random weights.
`ClipBundle.weights` records which. The demo's tiny CLIP goes through exactly the same path as
a user's ViT-L/14. Uncached weights without network (no route to the host, or
`HF_HUB_OFFLINE=1`) fail at once in one line that says to download them where there is
network, or to set `clip.pretrained` to a local checkpoint file. For the stage caches a tag or
a hub name is a name (its value is a config key; nothing on disk is hashed), a file or a
local-dir folder's files are inputs (`pretrained_files`).

`patch_attention = "csa"` (config `clip.patch_attention`) takes the patch tokens of the last
transformer block from correlative self-attention (SCLIP, Wang et al. 2023), computed from the
same frozen weights; see `correlative_attention`. The pooled image embedding stays standard.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from open_clip.transformer import ResidualAttentionBlock

from shared.atomic_files import atomic_path
from shared.config import ConfigError

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
PATCH_ATTENTIONS = ("standard", "csa")
RANDOM = "random"
RANDOM_SEED = 0          # seed of `pretrained = "random"` weights (unless `random_seed` is given)
PROBE_TIMEOUT_S = 2.0    # how long a download host may take to accept a connection
_HF_WEIGHTS = "open_clip_pytorch_model.bin"          # open_clip.constants.HF_WEIGHTS_NAME
_HF_SAFE_WEIGHTS = "open_clip_model.safetensors"     # open_clip.constants.HF_SAFE_WEIGHTS_NAME
_HF_CONFIG = "open_clip_config.json"                 # open_clip.constants.HF_CONFIG_NAME
HF_HUB_PREFIX = "hf-hub:"        # open_clip's schemas (open_clip.factory.parse_model_name)
LOCAL_DIR_PREFIX = "local-dir:"
# Fields of an open_clip model config that must agree between clip.model and a hub repo.
_ARCH_FIELDS = {
    "": ("embed_dim", "custom_text"),
    "vision_cfg": ("image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio",
                   "timm_model_name", "pool_type", "attentional_pool"),
    "text_cfg": ("context_length", "vocab_size", "width", "heads", "layers", "hf_model_name",
                 "hf_tokenizer_name"),
}
_registered = False


class CheckpointError(RuntimeError):
    """Weights that cannot be found or loaded; the message names the file or tag."""


@dataclass
class ClipBundle:
    """A CLIP model with its eval preprocessing and tokenizer, plus the dimensions we cache."""

    name: str
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    patch_attention: str = "standard"  # "csa": see `encode_images`
    weights: str = ""                  # where the weights came from: "random", a tag, a file

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, cols) derived from the vision tower."""
        grid = self.model.visual.grid_size
        return (int(grid[0]), int(grid[1])) if isinstance(grid, (tuple, list)) else (grid, grid)

    @property
    def n_patches(self) -> int:
        rows, cols = self.grid_size
        return rows * cols

    @property
    def width(self) -> int:
        """Width of the patch tokens (after ln_post, before projection)."""
        return int(self.model.visual.ln_post.normalized_shape[0])

    @property
    def embed_dim(self) -> int:
        """Width of the joint image/text embedding space."""
        return int(self.model.visual.output_dim)

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)


def register_model_configs() -> None:
    """Make the JSON model configs kept in `shared/model_configs/` known to open_clip."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def repo_model_config(model_name: str) -> Path | None:
    """The JSON config of a model defined in this repository (None for open_clip's own)."""
    path = MODEL_CONFIG_DIR / f"{model_name}.json"
    return path if path.is_file() else None


def is_schema_name(pretrained: str) -> bool:
    """True for open_clip's "hf-hub:org/repo" and "local-dir:/folder" names."""
    return pretrained.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX))


def is_checkpoint_path(pretrained: str) -> bool:
    """True when `pretrained` names a file rather than an open_clip tag, a hub name
    ("hf-hub:..." / "local-dir:...") or "random"."""
    if not pretrained or pretrained == RANDOM or is_schema_name(pretrained):
        return False
    return (pretrained.endswith(_CHECKPOINT_SUFFIXES) or "/" in pretrained
            or Path(pretrained).exists())


def pretrained_files(pretrained: str) -> list[Path]:
    """The files whose contents are the weights `pretrained` names, for cache identities:
    the checkpoint file, or a local-dir folder's config and weights file; [] for a tag, a
    hub name or "random" (their value is the identity)."""
    if is_checkpoint_path(pretrained):
        return [Path(pretrained)]
    if not pretrained.startswith(LOCAL_DIR_PREFIX):
        return []
    folder = Path(pretrained[len(LOCAL_DIR_PREFIX):])
    weights = _find_weights_in_dir(folder) if folder.is_dir() else None
    return [folder / _HF_CONFIG, *([weights] if weights else [])]


def create_clip(model_name: str, pretrained: str, device: str | torch.device = "cpu",
                patch_attention: str = "standard", random_seed: int = RANDOM_SEED
                ) -> ClipBundle:
    """Build an open_clip model in eval mode, with its preprocessing and tokenizer.

    `pretrained`: a tag, a checkpoint file, "hf-hub:org/repo", "local-dir:/folder" or
    "random" (see the module docstring);
    `random_seed` only matters for "random". `patch_attention` ("standard" | "csa", config
    `clip.patch_attention`) is what `encode_images` computes the patch tokens with; "csa" is
    checked against the model here.
    """
    if patch_attention not in PATCH_ATTENTIONS:
        raise ValueError(f"clip.patch_attention must be one of {PATCH_ATTENTIONS}, "
                         f"not {patch_attention!r}")
    if not pretrained.strip():
        raise ConfigError("config key 'clip.pretrained' is empty: set a hub tag such as "
                          '"openai", the path of a local checkpoint file, or "random" for '
                          "random weights")
    register_model_configs()
    if model_name not in open_clip.list_models():
        hint = ("; clip.model names the architecture (e.g. 'ViT-B-32'), a hub name goes in "
                "clip.pretrained" if is_schema_name(model_name) else "")
        raise CheckpointError(f"unknown CLIP model '{model_name}' (clip.model); see "
                              f"open_clip.list_models() or {MODEL_CONFIG_DIR}{hint}")
    if pretrained == RANDOM:
        model, preprocess = _random_model(model_name, device, random_seed)
    elif is_schema_name(pretrained):
        model, preprocess = _model_from_hub(model_name, pretrained, device)
    elif is_checkpoint_path(pretrained):
        model, preprocess = _model_from_file(model_name, Path(pretrained), device)
    else:
        model, preprocess = _model_from_tag(model_name, pretrained, device)
    model.eval()
    if patch_attention == "csa":
        check_csa_supported(model.visual, model_name)
    return ClipBundle(model_name, model, preprocess, open_clip.get_tokenizer(model_name),
                      patch_attention, weights=pretrained)


def _random_model(model_name: str, device: str | torch.device, seed: int
                  ) -> tuple[torch.nn.Module, Callable[[Any], torch.Tensor]]:
    """Random weights drawn on the CPU from `seed` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, device="cpu")
    return model.to(device), preprocess


# ----------------------------------------------------------------------------- local files


def _model_from_file(model_name: str, path: Path, device: str | torch.device
                     ) -> tuple[torch.nn.Module, Callable[[Any], torch.Tensor]]:
    """open_clip's own loading (format conversions included); a failure becomes one line
    naming the file and what is wrong with it."""
    if not path.is_file():
        raise CheckpointError(f"CLIP checkpoint not found: {path} (clip.pretrained)")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(path), device=device, weights_only=True)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - open_clip fails in many ways on a bad file
        raise CheckpointError(_file_problem(model_name, path, err)) from None
    return model, preprocess


def _file_problem(model_name: str, path: Path, err: Exception) -> str:
    """One line on why `path` did not load into `model_name`."""
    state = read_state_dict(path)
    try:
        expected = expected_shapes(model_name)
    except Exception:  # noqa: BLE001 - a tower that cannot be built on the meta device
        expected = {}
    mismatch = state_dict_mismatch(state, expected) if expected else ""
    if mismatch:
        return (f"CLIP checkpoint {path} (clip.pretrained) does not fit clip.model "
                f"'{model_name}': {mismatch}")
    return (f"could not load CLIP checkpoint {path} (clip.pretrained) into '{model_name}': "
            f"{_first_line(err)}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return "not a plain state dict of tensors" if "weights_only" in line else line


def _reason(err: BaseException) -> str:
    """': <first sentence of the error>' when it says something, else ''."""
    sentence = _first_line(err).split(". ")[0].rstrip(".")
    return f": {sentence[:120]}" if len(sentence) >= 20 else ""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (a state dict, maybe under 'state_dict' or with
    DDP's 'module.' prefix); CheckpointError naming the file when it is not one."""
    where = f"CLIP checkpoint {path} (clip.pretrained)"
    if path.stat().st_size == 0:
        raise CheckpointError(f"{where} is an empty file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            loaded: Any = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise CheckpointError(f"{where} holds Python objects besides tensors; save a plain "
                                  "state dict: torch.save(model.state_dict(), path)") from None
        raise CheckpointError(f"{where} is not a PyTorch checkpoint{_reason(err)}") from None
    except Exception as err:  # noqa: BLE001 - zip, EOF, safetensors header errors
        raise CheckpointError(f"{where} is not a readable checkpoint (truncated or corrupt?)"
                              f"{_reason(err)}") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not loaded:
        what = f"a {type(loaded).__name__}" if loaded else "nothing"
        raise CheckpointError(f"{where} holds {what}, not a state dict of tensors")
    return {(k[7:] if str(k).startswith("module.") else str(k)): v for k, v in loaded.items()}


def expected_shapes(model_name: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of `model_name`'s state dict (built on the meta device:
    no memory, no random numbers)."""
    with torch.device("meta"):
        model = open_clip.create_model(model_name, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def state_dict_mismatch(state: dict[str, Any], expected: dict[str, tuple[int, ...]]) -> str:
    """'' when `state` has exactly the expected tensors; else the first shape mismatch and
    the counts of missing / unexpected tensors, on one line."""
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    wrong = [k for k in expected if k in shapes and shapes[k] != expected[k]]
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in state if k not in expected]
    parts = []
    if wrong:
        more = f" (and {len(wrong) - 1} more of other shapes)" if len(wrong) > 1 else ""
        parts.append(f"{wrong[0]} is {list(shapes[wrong[0]])} in the file but "
                     f"{list(expected[wrong[0]])} in the model{more}")
    if missing:
        parts.append(f"{_count(len(missing), 'tensor')} of the model missing (first: "
                     f"{missing[0]})")
    if unexpected:
        parts.append(f"{_count(len(unexpected), 'tensor')} not in the model (first: "
                     f"{unexpected[0]})")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- hub tags


def _model_from_tag(model_name: str, tag: str, device: str | torch.device
                    ) -> tuple[torch.nn.Module, Callable[[Any], torch.Tensor]]:
    """Weights of an open_clip tag: from the cache without network, else downloaded when the
    host answers; one line of advice otherwise."""
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise CheckpointError(
            f"clip.pretrained '{tag}' is neither a file nor a pretrained tag of clip.model "
            f"'{model_name}' (its tags: {tags}); use a tag, an \"hf-hub:org/repo\" name, a local "
            'checkpoint path or "random"')
    cached = weights_cached(cfg)
    if not cached:
        _check_download_possible(
            f"CLIP weights '{tag}' for {model_name} (clip.pretrained)",
            f"open_clip.create_model('{model_name}', pretrained='{tag}')", download_url(cfg),
            hf=_hf_source(cfg) is not None)
    try:
        with hub_offline(cached):  # the tag's activation: OpenAI's weights need QuickGELU
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=tag, device=device, weights_only=True,
                force_quick_gelu=bool(cfg.get("quick_gelu")))
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - download / cache failures of many kinds
        raise CheckpointError(
            f"could not load CLIP weights '{tag}' for {model_name} (clip.pretrained): "
            f"{_first_line(err)}; set clip.pretrained to a local checkpoint file") from None
    return model, preprocess


def _hf_source(cfg: dict[str, Any]) -> tuple[str, list[str]] | None:
    """(repo id, candidate file names) when open_clip would fetch `cfg` from the HF hub."""
    if not cfg.get("hf_hub") or not open_clip.pretrained.has_hf_hub():
        return None
    repo_id, filename = os.path.split(cfg["hf_hub"])
    filename = filename or _HF_WEIGHTS
    names = [filename]
    if filename == _HF_WEIGHTS:
        names.insert(0, _HF_SAFE_WEIGHTS)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo_id, names


def weights_cached(cfg: dict[str, Any]) -> bool:
    """Whether the weights of a pretrained config are already on this machine."""
    if "file" in cfg:
        return Path(cfg["file"]).is_file()
    hub = _hf_source(cfg)
    if hub is not None:
        from huggingface_hub import try_to_load_from_cache
        repo_id, names = hub
        return any(isinstance(try_to_load_from_cache(repo_id, n), str) for n in names)
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()


def download_url(cfg: dict[str, Any]) -> str:
    """The address open_clip would download the weights of `cfg` from."""
    if _hf_source(cfg) is not None:
        from huggingface_hub import constants
        return constants.ENDPOINT
    return cfg.get("url", "")


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """'' when a TCP connection to `url`'s host (or its proxy) opens within `timeout`; else
    the reason."""
    parsed = urlparse(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(parsed.hostname or ""):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return ""
    except OSError as err:
        return str(err) or type(err).__name__


def _check_download_possible(what: str, create_call: str, url: str, hf: bool,
                             alternative: str = "a local checkpoint file") -> None:
    """Fail at once, in one line, when uncached weights cannot be downloaded (HF offline mode,
    no route to the host). `what` names the weights, `create_call` fills the cache."""
    from huggingface_hub import constants
    advice = (f"download them where there is network ({create_call} fills ~/.cache/huggingface)"
              f" and copy the cache here, or set clip.pretrained to {alternative}")
    what = f"{what} are not in the local cache"
    if hf and constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"{what} and HF_HUB_OFFLINE is set: {advice}")
    reason = unreachable(url) if url else "no download address"
    if reason:
        raise CheckpointError(f"{what} and {urlparse(url).netloc or url} cannot be reached "
                              f"({reason}): {advice}")


# ----------------------------------------------------------------------------- hub names


def _model_from_hub(model_name: str, pretrained: str, device: str | torch.device
                    ) -> tuple[torch.nn.Module, Callable[[Any], torch.Tensor]]:
    """"hf-hub:org/repo" / "local-dir:/folder": the repo's config is checked against
    `model_name`, its weights are made local (cache, else download), then open_clip loads
    both through its own schema, without network."""
    schema, _, ident = pretrained.partition(":")
    if not ident.strip():
        raise CheckpointError(f"clip.pretrained '{pretrained}' names no "
                              f"{'hub repo' if schema == 'hf-hub' else 'folder'}")
    if schema == "hf-hub":
        _check_repo_id(pretrained, ident)
        cached = _hub_cached(ident)
        if not cached:
            from huggingface_hub import constants
            _check_download_possible(
                f"CLIP weights '{pretrained}' (clip.pretrained)",
                f"open_clip.create_model('{pretrained}')", constants.ENDPOINT, hf=True,
                alternative="a local checkpoint file or 'local-dir:<folder>' holding the "
                            "repo's files")
        with hub_offline(cached):
            config_file = _hub_download(pretrained, ident, _HF_CONFIG)
            check_hub_architecture(model_name, pretrained, config_file)
            weights_file = _hub_download(pretrained, ident, None)
    else:
        config_file, weights_file = _local_dir_files(pretrained, Path(ident))
        check_hub_architecture(model_name, pretrained, config_file)
    try:
        with hub_offline(True):  # everything is local by now
            model, _, preprocess = open_clip.create_model_and_transforms(
                pretrained, device=device, weights_only=True)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - open_clip fails in many ways on bad files
        raise CheckpointError(_hub_weights_problem(model_name, pretrained, weights_file, err)
                              ) from None
    return model, preprocess


def _check_repo_id(pretrained: str, repo_id: str) -> None:
    """One line when `repo_id` is not a Hugging Face repo id ("org/repo")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise CheckpointError(f"clip.pretrained '{pretrained}' does not name a hub repo "
                              f"(\"hf-hub:org/repo\"){_reason(err)}") from None


def _hub_cached(repo_id: str) -> bool:
    """Whether a hub repo's open_clip config and weights are both in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, name), str)
    return cached(_HF_CONFIG) and (cached(_HF_SAFE_WEIGHTS) or cached(_HF_WEIGHTS))


def _hub_download(pretrained: str, repo_id: str, filename: str | None) -> Path:
    """A file of the repo (None: its weights, safetensors first) from the cache or the hub,
    as open_clip fetches it."""
    from open_clip.pretrained import download_pretrained_from_hf
    try:
        return Path(download_pretrained_from_hf(repo_id, filename=filename))
    except Exception as err:  # noqa: BLE001 - missing repo / file, HTTP errors
        what = filename or f"weights ({_HF_SAFE_WEIGHTS} or {_HF_WEIGHTS})"
        raise CheckpointError(f"could not get the {what} of clip.pretrained '{pretrained}': "
                              f"{_hub_error(err)}") from None


def _hub_error(err: BaseException) -> str:
    """What went wrong in a hub download, in a few words (open_clip wraps the hub's error)."""
    from huggingface_hub import errors
    cause = err.__cause__ or err.__context__ or err
    if isinstance(cause, errors.GatedRepoError):
        return "the repo is gated: log in (hf auth login) and accept its terms on the hub"
    if isinstance(cause, errors.RepositoryNotFoundError):
        return "no such repo on the hub (or it is private)"
    if isinstance(cause, errors.RevisionNotFoundError):
        return "the hub has no such revision"
    if isinstance(cause, errors.LocalEntryNotFoundError):
        return "the hub cannot be reached and it is not in the local cache"
    if isinstance(cause, errors.EntryNotFoundError):
        return "the repo has no such file"
    return _first_line(cause)[:160]


def _find_weights_in_dir(folder: Path) -> Path | None:
    """The weights file open_clip's local-dir schema picks in `folder` (None if none)."""
    from open_clip.factory import _find_checkpoint_in_dir
    found = _find_checkpoint_in_dir(folder)
    return Path(found) if found else None


def _local_dir_files(pretrained: str, folder: Path) -> tuple[Path, Path]:
    """(config, weights) of a local-dir folder; one line naming what is missing."""
    if not folder.is_dir():
        raise CheckpointError(f"CLIP folder not found: {folder} (clip.pretrained "
                              f"'{pretrained}')")
    config_file = folder / _HF_CONFIG
    if not config_file.is_file():
        raise CheckpointError(f"CLIP folder {folder} (clip.pretrained) has no {_HF_CONFIG}")
    weights = _find_weights_in_dir(folder)
    if weights is None:
        raise CheckpointError(f"CLIP folder {folder} (clip.pretrained) has no weights file "
                              f"({_HF_SAFE_WEIGHTS} or {_HF_WEIGHTS})")
    return config_file, weights


def hub_model_config(pretrained: str, config_file: Path) -> dict[str, Any]:
    """The `model_cfg` of a hub repo's open_clip_config.json."""
    try:
        loaded = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{_HF_CONFIG} of clip.pretrained '{pretrained}' is not readable "
                              f"JSON{_reason(err)}") from None
    cfg = loaded.get("model_cfg") if isinstance(loaded, dict) else None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{_HF_CONFIG} of clip.pretrained '{pretrained}' has no "
                              "'model_cfg' table")
    return cfg


def architecture_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> str:
    """'' when two open_clip model configs agree on `_ARCH_FIELDS` (open_clip's defaults
    filling what a config leaves out); else 'field is X in the repo's config but Y ...'."""
    defaults = {"": {"custom_text": False}, "vision_cfg": asdict(CLIPVisionCfg()),
                "text_cfg": asdict(CLIPTextCfg())}

    def value(cfg: dict[str, Any], section: str, field: str) -> Any:
        table = cfg if not section else (cfg.get(section) or {})
        got = table.get(field, defaults[section].get(field))
        if field in ("image_size", "patch_size") and isinstance(got, int):
            return [got, got]
        return list(got) if isinstance(got, tuple) else got

    for section, fields in _ARCH_FIELDS.items():
        for field in fields:
            want, have = value(expected, section, field), value(found, section, field)
            if want != have:
                name = f"{section}.{field}" if section else field
                return f"{name} is {have!r} in the repo's config but {want!r} in clip.model"
    return ""


def check_hub_architecture(model_name: str, pretrained: str, config_file: Path) -> None:
    """One line naming both when the repo's architecture is not `model_name`'s."""
    mismatch = architecture_mismatch(open_clip.get_model_config(model_name) or {},
                                     hub_model_config(pretrained, config_file))
    if mismatch:
        raise CheckpointError(f"clip.pretrained '{pretrained}' is not a '{model_name}' "
                              f"(clip.model): {mismatch}; set clip.model to the repo's "
                              "architecture")


def _hub_weights_problem(model_name: str, pretrained: str, weights: Path,
                         err: Exception) -> str:
    """One line on why a hub repo's weights did not load into `model_name`."""
    try:
        mismatch = state_dict_mismatch(read_state_dict(weights), expected_shapes(model_name))
    except CheckpointError as unreadable:  # names the file and what is wrong with it
        return str(unreadable)
    except Exception:  # noqa: BLE001 - a tower that cannot be built on the meta device
        mismatch = ""
    if mismatch:
        return (f"CLIP weights of clip.pretrained '{pretrained}' ({weights}) do not fit "
                f"clip.model '{model_name}': {mismatch}")
    return (f"could not load CLIP weights '{pretrained}' into '{model_name}' "
            f"(clip.pretrained): {_first_line(err)}")


@contextlib.contextmanager
def hub_offline(offline: bool = True) -> Iterator[None]:
    """Hugging Face hub offline mode while the block runs (cached files load without a
    single request); `HF_HUB_OFFLINE` only takes effect when set before the import."""
    from huggingface_hub import constants
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def save_clip_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Save a plain state dict that `create_clip(name, pretrained=path)` loads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


@torch.no_grad()
def encode_images(bundle: ClipBundle, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled image embedding [B, E], patch tokens [B, P, W] after ln_post, without CLS).

    With `bundle.patch_attention == "csa"` the patch tokens are those of the last block run with
    correlative self-attention (`csa_block`); the pooled embedding is still the standard
    forward's, bit for bit (the tower runs unchanged, a hook on its last block reads the block's
    input and computes the CSA branch beside it, so the blocks before it run once).
    """
    visual = bundle.model.visual
    if bundle.patch_attention == "csa":
        return _encode_csa(visual, images)
    previous = visual.output_tokens
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = previous
    return pooled, tokens


def check_csa_supported(visual: torch.nn.Module, model_name: str = "") -> None:
    """CSA needs an open_clip VisionTransformer whose last block is a standard
    `ResidualAttentionBlock` (one `nn.MultiheadAttention` with packed q/k/v weights) and whose
    tokens are not re-mixed by an attentional pooler; say which part is missing otherwise."""
    what = f"CLIP model '{model_name}'" if model_name else "this CLIP model"
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if not blocks or not hasattr(visual, "ln_post") or not hasattr(visual, "_global_pool"):
        raise ValueError(f"clip.patch_attention = 'csa' needs a ViT image tower; {what} has "
                         f"{type(visual).__name__}")
    last = blocks[-1]
    attn = getattr(last, "attn", None)
    if (not isinstance(last, ResidualAttentionBlock) or hasattr(last, "ln_1_kv")
            or not isinstance(attn, torch.nn.MultiheadAttention)
            or not attn._qkv_same_embed_dim):
        raise ValueError(f"clip.patch_attention = 'csa' needs standard attention blocks "
                         f"(nn.MultiheadAttention); the last block of {what} is "
                         f"{type(last).__name__}")
    if getattr(visual, "attn_pool", None) is not None:
        raise ValueError(f"clip.patch_attention = 'csa' is not defined for {what}: its patch "
                         "tokens come from an attentional pooler")


def correlative_attention(attn: torch.nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """SCLIP's correlative self-attention with the frozen weights of `attn`; x [B, L, D].

    Per head, with q, k, v the packed input projections of x (in_proj_weight / in_proj_bias)
    and s = head_dim ** -0.5 (the block's own scale):
        out = (softmax(s q q^T) + softmax(s k k^T)) v,
    heads concatenated, then out_proj. The two maps are softmaxed separately and added, not
    renormalised (each row sums to 2), as in SCLIP's released code. Computed as two
    scaled-dot-product attentions with shared values (q attending q, k attending k), which
    is the same by linearity. No attention dropout (the model is frozen and in eval mode).
    """
    batch, length, width = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
    return attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))


def csa_block(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """The last block with its attention replaced by `correlative_attention`; x [B, L, D].

    Which parts of SCLIP this follows (its `clip/model.py`, VisionTransformer.forward with
    csa=True and custom_attn): CSA over all tokens, the class token included, in the last
    block only, with that block's ln_1, packed q/k/v projection and out_proj; the block's
    residual connection and its FFN (ln_2, mlp) are KEPT, as SCLIP's released code does
    (x + csa(ln_1(x)), then + mlp(ln_2(.))); ClearCLIP-style removal of the residual/FFN is
    not done. open_clip's LayerScale (ls_1 / ls_2, identity for CLIP weights) is applied where
    the standard block applies it. Not followed: SCLIP's sliding-window inference, positional
    embedding interpolation and PAMR (segmentation-specific). Afterwards the tokens go through
    the tower's own post-processing (`_tokens_after_pool`), as standard tokens do.
    """
    x = x + block.ls_1(correlative_attention(block.attn, block.ln_1(x)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _tokens_after_pool(visual: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The patch tokens open_clip's VisionTransformer returns for final sequence x [B, L, D]
    (no attentional pooler): ln_post then the pool's token split, or the split alone when
    `final_ln_after_pool` (then open_clip normalises only the pooled vector)."""
    if getattr(visual, "final_ln_after_pool", False):
        return visual._global_pool(x)[1]
    return visual._global_pool(visual.ln_post(x))[1]


def _encode_csa(visual: torch.nn.Module, images: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard forward for the pooled embedding + the CSA branch of the last block."""
    last = visual.transformer.resblocks[-1]
    batch_first = last.attn.batch_first
    branch: list[torch.Tensor] = []

    def run_csa(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0] if batch_first else args[0].transpose(0, 1)  # -> [B, L, D]
        branch.append(csa_block(module, x))

    handle = last.register_forward_hook(run_csa)
    try:
        pooled = visual(images)
    finally:
        handle.remove()
    if isinstance(pooled, tuple):  # output_tokens set by a caller
        pooled = pooled[0]
    return pooled, _tokens_after_pool(visual, branch[0])
