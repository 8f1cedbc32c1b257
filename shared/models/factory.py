"""The one place models are built: from a config (to train) or from a checkpoint (to use).

Checkpoints describe themselves, as open_clip's model configs and nanoGPT's `model_args` do:
a decoder's `best.pt` carries `meta` = the `DecoderDims` it was built with (+ `visual_input`),
so `decoder_from_checkpoint` rebuilds it without re-deriving sizes from the run's config;
`fsgr.pt` carries what it was fitted on (`FsgrMeta`) and its `[fsgr]` values, and `load_fsgr`
refuses one that does not fit the run's `[fsgr]` in one line. (A decoder checkpoint written before the dims were recorded, holding only
`d_visual` / `vocab_size`, is rebuilt with the sizes of the config it is loaded with.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from shared.checkpoint_files import load_checkpoint
from shared.config import Config
from shared.models.caption_decoder import CaptionDecoder, DecoderDims
from shared.models.fsgr import FsgrEncoder

# -- caption decoder -------------------------------------------------------------------------


def decoder_dims(config: Config, d_visual: int, vocab_size: int,
                 memory: bool = True) -> DecoderDims:
    """The sizes `[decoder]` + `[memory]` give a decoder reading visual tokens of width
    `d_visual` (`memory=False`: without PMA memory, as `extract fit`'s auxiliary decoder)."""
    d = config.decoder
    return DecoderDims(
        d_visual=d_visual, vocab_size=vocab_size, d_model=d.d_model,
        n_heads=d.n_heads, n_enc_layers=d.n_enc_layers if memory else 0,
        n_dec_layers=d.n_dec_layers, d_ff=d.d_ff, dropout=d.dropout,
        max_len=config.data.max_caption_words + 2,
        self_memory=memory and config.memory.self, cross_memory=memory and config.memory.cross)


def build_decoder(config: Config, d_visual: int, vocab_size: int) -> CaptionDecoder:
    """The decoder of `[decoder]` + `[memory]`, reading visual tokens of width `d_visual`."""
    return CaptionDecoder(decoder_dims(config, d_visual, vocab_size))


def decoder_meta(decoder: CaptionDecoder, visual_input: str) -> dict[str, Any]:
    """What a decoder checkpoint says about its model: every `DecoderDims` field and the
    visual features it reads."""
    return {**asdict(decoder.dims), "visual_input": visual_input}


def dims_of(meta: dict[str, Any], config: Config | None = None) -> DecoderDims:
    """The `DecoderDims` of a checkpoint's `meta` (older ones: the rest from `config`)."""
    names = [f.name for f in fields(DecoderDims)]
    if all(name in meta for name in names):
        return DecoderDims(**{name: meta[name] for name in names})
    if config is None:
        raise RuntimeError("the checkpoint does not record its decoder's sizes")
    return decoder_dims(config, meta["d_visual"], meta["vocab_size"])


def decoder_from_checkpoint(ckpt: dict[str, Any], path: Path,
                            config: Config | None = None) -> CaptionDecoder:
    """The decoder `ckpt` (a loaded `best.pt`) describes, with its weights (memory prototypes
    included); one line naming `path` when the weights do not fit."""
    decoder = CaptionDecoder(dims_of(ckpt["meta"], config))
    try:
        decoder.load_state_dict(ckpt["model"])  # prototype buffers take the saved shapes
    except RuntimeError as err:
        raise RuntimeError(f"{path}: the weights do not fit the decoder it describes: "
                           f"{str(err).splitlines()[0]}") from None
    return decoder


# -- FSGR encoder ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FsgrMeta:
    """What an FSGR checkpoint was fitted on; `extract encode` checks it against the cache."""

    clip_model: str
    grid: tuple[int, int]
    clip_width: int
    embed_dim: int
    concepts_identity: str
    n_concepts: int


def build_encoder(config: Config, meta: FsgrMeta, visual_proj: torch.Tensor,
                  concept_embeddings: torch.Tensor | None,
                  logit_scale: float = 100.0) -> FsgrEncoder:
    """The FSGR encoder `[fsgr]` describes, on the cache `meta` describes; `logit_scale` is
    the CLIP model's, frozen unless `fsgr.learn_logit_scale`."""
    fsgr = config.fsgr
    return FsgrEncoder(meta.clip_width, meta.embed_dim, fsgr.d_model, fsgr.n_layers,
                       fsgr.n_heads, fsgr.d_ff, fsgr.dropout, fsgr.top_k, fsgr.gumbel_tau,
                       visual_proj, concept_embeddings, logit_scale, fsgr.learn_logit_scale)


def load_fsgr(config: Config, device: torch.device) -> tuple[FsgrEncoder, FsgrMeta]:
    """The fitted FSGR encoder of `config`'s run (`fsgr.pt`, in eval mode on `device`) and
    what it was fitted on; one line when the file does not fit `[fsgr]`."""
    from shared.stages import fit_stage  # the stage layout imports the model code's users
    path = fit_stage(config).output
    if not Path(path).exists():
        raise FileNotFoundError(f"FSGR checkpoint not found: {path} (run `python -m extract fit`)")
    ckpt = load_checkpoint(path, "FSGR checkpoint", "re-run `python -m extract fit --force`",
                           keys=("encoder", "meta"))
    raw = ckpt["meta"]
    meta = FsgrMeta(raw["clip_model"], tuple(raw["grid"]), raw["clip_width"], raw["embed_dim"],
                    raw["concepts_identity"], raw["n_concepts"])
    proj = ckpt["encoder"]["quantizer.visual_proj"]
    # the checkpoint's scale (a frozen buffer; a parameter in fits with fsgr.learn_logit_scale
    # and in those made before the scale came from CLIP) is loaded with the weights
    encoder = build_encoder(config, meta, proj, None)
    check_fits(encoder.state_dict(), ckpt["encoder"], path)
    encoder.load_state_dict(ckpt["encoder"])
    return encoder.to(device).eval(), meta


def check_fits(expected: dict[str, torch.Tensor], saved: dict[str, torch.Tensor],
               path: Path) -> None:
    """One line when the checkpoint's tensors do not fit the encoder `[fsgr]` describes."""
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    shapes = [(k, list(saved[k].shape), list(v.shape)) for k, v in expected.items()
              if k in saved and saved[k].shape != v.shape and v.numel() > 0]  # empty: a
    # placeholder the checkpoint fills (the concept codebook)
    if not (missing or extra or shapes):
        return
    detail = (f"{shapes[0][0]} is {shapes[0][1]} in the file but {shapes[0][2]} for this "
              f"config" if shapes else f"{len(missing)} tensors missing, {len(extra)} unexpected "
              f"(e.g. {(missing or extra)[0]})")
    raise RuntimeError(f"{path}: the FSGR checkpoint does not fit [fsgr] of this config "
                       f"({detail}): use the config it was fitted with, or re-run "
                       f"`python -m extract fit --force`")
