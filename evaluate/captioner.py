"""`Captioner`: caption your own images from Python with a finished run.

    from fsgr_pma import Captioner
    captioner = Captioner.from_run("runs/demo")          # CLIP, FSGR, decoder: loaded once
    for c in captioner.caption(["photo.jpg", "folder/"], mentions=True, codebook=True):
        print(c.source, c.text, [m.category for m in c.mentions])

CLIP -> (FSGR) -> decoder with beam search, the same models and numeric path as the cached
pipeline: features are rounded to `store.dtype` as the cache stores them, so an image of the
dataset gets the caption `evaluate score` gave it, and `evaluate caption` prints what
`caption` returns. Unreadable images get an `error`, not an exception.

`from_run` reads `<experiment>/run_config.json`, which `python -m train` writes: the run's
config and the folder it was started from. The config's relative paths (data files, a CLIP
checkpoint file, `data.run_root`) start there, and the stage manifests recorded them as
written, so the models are loaded with that folder as the current directory (restored
after); the run itself is read where `run_dir` points.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluate.caption_images import ImageInput, Source, expand_inputs, read_rgb
from evaluate.chair import vocabulary_of
from evaluate.chair_vocabulary import Mention, ObjectWords
from evaluate.checkpoint import load_trained_decoder
from extract.concepts import ConceptCodebook
from shared.models.factory import FsgrMeta, load_fsgr
from shared.clip_model import create_clip, encode_images
from shared.config import Config, config_from_dict, load_config
from shared.devices import autocast, resolve_device
from shared.images import ImageError
from shared.models.decoding import beam_search
from shared.stages import RUN_CONFIG_FILE, concepts_stage


@dataclass
class Caption:
    """The caption of one image, or why it has none."""

    source: Source                         # the file, or the position of a PIL image
    text: str | None = None                # None when the image could not be read
    error: str | None = None
    mentions: list[Mention] | None = None  # mentions=True: the objects the caption names
    concepts: list[list[str]] | None = None  # codebook=True: each patch's FSGR concept, rows


class Captioner:
    """A finished run's CLIP, FSGR encoder (for `decoder.visual_input = "fsgr"`) and decoder."""

    def __init__(self, config: Config, device: str | torch.device | None = None,
                 working_dir: str | Path | None = None) -> None:
        """Load the models of `config`'s run; its relative paths start at `working_dir`
        (default: the current directory)."""
        self.config = config
        self.working_dir = Path(working_dir or Path.cwd()).resolve()
        self.device = resolve_device(config.run.device) if device is None \
            else torch.device(device)
        self.fsgr: torch.nn.Module | None = None
        self.meta: FsgrMeta | None = None
        self.concept_words: list[str] = []
        self._objects: ObjectWords | None = None
        with _current_directory(self.working_dir):
            self.trained = load_trained_decoder(config, self.device)
            self.clip = create_clip(config.clip.model, config.clip.pretrained, self.device,
                                    patch_attention=config.clip.patch_attention)
            if self.trained.visual_input == "fsgr":
                self._load_fsgr()

    @classmethod
    def from_config(cls, config_or_path: Config | str | Path,
                    overrides: Iterable[str] = (), device: str | torch.device | None = None
                    ) -> Captioner:
        """The run of a config (a `Config`, a TOML file or a shipped config's name) plus
        `section.key=value` overrides; relative paths start at the current directory."""
        overrides = list(overrides)
        if isinstance(config_or_path, Config):
            config = (config_from_dict(config_or_path.to_dict(), "config", overrides)
                      if overrides else config_or_path)
        else:
            config = load_config(config_or_path, overrides)
        return cls(config, device)

    @classmethod
    def from_run(cls, run_dir: str | Path, overrides: Iterable[str] = (),
                 device: str | torch.device | None = None) -> Captioner:
        """The run trained in `run_dir` (its experiment folder, the `train/` folder in it, or
        its `run_config.json`), from any current directory."""
        path = _run_config_file(Path(run_dir))
        raw, working_dir = _read_run_config(path)
        return cls(config_from_dict(raw, str(path), list(overrides)), device, working_dir)

    def caption(self, images: ImageInput | Iterable[ImageInput], batch_size: int = 32,
                mentions: bool = False, codebook: bool = False) -> list[Caption]:
        """One `Caption` per image, in input order (folders expanded in place, sorted).

        `mentions`: the CHAIR object mentions of each caption (`eval.chair_vocabulary` over
        the categories of `data.instances_json`); `codebook`: each patch's FSGR concept word,
        a [rows][cols] grid (FSGR runs only).
        """
        return list(self.iter_captions(images, batch_size, mentions, codebook))

    def iter_captions(self, images: ImageInput | Iterable[ImageInput], batch_size: int = 32,
                      mentions: bool = False, codebook: bool = False) -> Iterator[Caption]:
        """`caption`, one batch at a time (what `evaluate caption` prints as it goes)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if codebook and self.fsgr is None:
            raise ValueError("codebook maps need an FSGR run, but this run's decoder reads raw "
                             "CLIP features (decoder.visual_input = \"clip\")")
        objects = self.object_words() if mentions else None
        items = expand_inputs(images)
        for start in range(0, len(items), batch_size):
            results, pixels = [], []
            for source, image in items[start:start + batch_size]:
                result = Caption(source)
                try:
                    pixels.append(self.clip.preprocess(read_rgb(image, self.clip.image_size)))
                except ImageError as err:
                    result.error = str(err)
                except Exception as err:  # any undecodable image is reported, not fatal
                    result.error = f"{type(err).__name__}: {err}"
                results.append(result)
            if pixels:
                texts, index = self._run(torch.stack(pixels))
                for k, result in enumerate(r for r in results if r.error is None):
                    result.text = texts[k]
                    if objects is not None:
                        result.mentions = objects.mentions(result.text)
                    if codebook:
                        result.concepts = self._concept_grid(index[k])
            yield from results

    def object_words(self) -> ObjectWords:
        """The CHAIR vocabulary of the run's dataset (read on first use)."""
        if self._objects is None:
            paths = self.config.data.instances_json
            if not paths:
                raise ValueError("object mentions need the dataset's categories, but "
                                 "data.instances_json is empty")
            self._objects = vocabulary_of([self.working_dir / p for p in paths],
                                          self.config.eval.chair_vocabulary)
        return self._objects

    def _load_fsgr(self) -> None:
        """The FSGR encoder and its codebook's concept words."""
        config = self.config
        self.fsgr, self.meta = load_fsgr(config, self.device)
        if self.meta.clip_model != config.clip.model:
            raise RuntimeError(f"the FSGR modules were fitted on CLIP '{self.meta.clip_model}'"
                               f" but clip.model is '{config.clip.model}'")
        path = concepts_stage(config).output
        self.concept_words = ConceptCodebook.load(path).words
        if len(self.concept_words) != self.meta.n_concepts:
            raise RuntimeError(f"{path} has {len(self.concept_words)} concepts but the FSGR "
                               f"modules were fitted on {self.meta.n_concepts}: re-run "
                               "`python -m extract fit`")

    @torch.no_grad()
    def _run(self, pixels: torch.Tensor) -> tuple[list[str], np.ndarray | None]:
        """Captions of a batch of preprocessed images, and each patch's codebook index
        [B, P] (FSGR runs)."""
        config, device, vocab = self.config, self.device, self.trained.vocab
        with autocast(device, config.clip.precision):
            pooled, tokens = encode_images(self.clip, pixels.to(device))
        pooled, tokens = (self._as_cached(x) for x in (pooled, tokens))
        visual, index = tokens, None
        if self.fsgr is not None:
            with autocast(device, config.clip.precision):
                out = self.fsgr(tokens, pooled, self.meta.grid)
            visual, index = self._as_cached(out.features), out.codebook_index.cpu().numpy()
        with autocast(device, config.train.precision):
            result = beam_search(self.trained.decoder, visual, vocab.bos_id, vocab.eos_id,
                                 config.eval.beam_size, config.eval.max_length)
        return [vocab.decode(ids) for ids in result.best.tolist()], index

    def _as_cached(self, values: torch.Tensor) -> torch.Tensor:
        """Round to `store.dtype` as the feature cache does, back to float32."""
        rounded = values.float().cpu().numpy().astype(np.dtype(self.config.store.dtype))
        return torch.from_numpy(rounded.astype(np.float32)).to(self.device)

    def _concept_grid(self, index: np.ndarray) -> list[list[str]]:
        """One image's codebook indices [P] as concept words, [rows][cols]."""
        rows, cols = self.meta.grid
        words = [self.concept_words[i] for i in index.tolist()]
        return [words[r * cols:(r + 1) * cols] for r in range(rows)]


def _run_config_file(run_dir: Path) -> Path:
    """The run_config.json of an experiment folder, of the `train/` folder in one, or itself."""
    if run_dir.suffix == ".json":
        candidates = [run_dir]
    else:
        candidates = [run_dir / RUN_CONFIG_FILE]
        if run_dir.name == "train":
            candidates.append(run_dir.parent / RUN_CONFIG_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{candidates[-1]} not found: runs record their config there from "
                            "this version on (run `python -m train` with the run's config once; "
                            "a finished run only writes the file), or use "
                            "Captioner.from_config(config)")


def _read_run_config(path: Path) -> tuple[dict[str, Any], Path]:
    """The recorded config (its `data.run_root` made the folder the run lies in, when `path`
    is in its experiment folder) and the folder its relative paths start at."""
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RuntimeError(f"{path}: not valid JSON ({err})") from None
    if not (isinstance(record, dict) and isinstance(record.get("config"), dict)
            and isinstance(record.get("working_dir"), str)
            and isinstance(record["config"].get("data"), dict)):
        raise RuntimeError(f"{path}: not a run config (expected {{\"config\": {{...}}, "
                           "\"working_dir\": \"...\"}, as `python -m train` writes)")
    raw, working_dir = record["config"], Path(record["working_dir"])
    if not working_dir.is_dir():
        raise FileNotFoundError(f"{path}: working_dir {working_dir} (where the run's relative "
                                "paths start) does not exist; use Captioner.from_config with "
                                "a config for this machine")
    root = _run_root_of(path.resolve().parent, raw)
    if root is not None:
        raw = {**raw, "data": {**raw["data"], "run_root": str(root)}}
    return raw, working_dir


def _run_root_of(experiment: Path, raw: dict[str, Any]) -> Path | None:
    """The `data.run_root` under which `experiment` is the run's experiment folder
    (`<root>/<data.name>[/experiments/<train.experiment>]`), or None when it is not one."""
    name = raw["data"].get("name")
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    tail = [name, "experiments", train["experiment"]] if train.get("experiment") else [name]
    if not all(isinstance(part, str) and part for part in tail):
        return None
    if len(experiment.parts) <= len(tail) or list(experiment.parts[-len(tail):]) != tail:
        return None
    return Path(*experiment.parts[:-len(tail)])


@contextmanager
def _current_directory(folder: Path) -> Iterator[None]:
    """Run the block in `folder` (the run's relative paths start there), then go back."""
    if not folder.is_dir():
        raise FileNotFoundError(f"working directory of the run not found: {folder}")
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)
