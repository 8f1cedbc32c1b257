"""`extract fit`: train the FSGR modules on the CLIP cache (CLIP itself stays frozen).

Loss = caption cross-entropy of an auxiliary Transformer decoder (the same `CaptionDecoder`
the train stage uses, here without memory) + `fsgr.contrastive_weight` x the local
supervised-contrastive loss over the patch embeddings of the batch. Streams from the cache,
validates each epoch (val loss and greedy CIDEr-D), keeps `last.pt` / `best.pt` in
`runs/<dataset>/fsgr/`, resumes from `last.pt` (or from `last.prev.pt`, the epoch before,
when `last.pt` is unreadable: `shared.checkpoint_files`), and finally writes `fsgr.pt` (the
best FSGR encoder weights + what it was fitted on) with its manifest. A `fsgr.warmup_steps`
longer than the planned steps is a warning (stderr, the epoch record's `"warnings"`, the
manifest summary). Each epoch's record goes to `fit_log.jsonl`, with `train.tensorboard` also
to TensorBoard in `fsgr/tensorboard/fit/` (`shared.run_log`).

The patch-concept logits use the CLIP model's own logit scale (`clip_logit_scale`, recorded by
`extract clip`), frozen unless `fsgr.learn_logit_scale`. Each epoch also logs how often the
straight-through Gumbel sample equals the argmax assignment over the epoch's training
patches, and the codebook usage of the argmax (eval) assignment over the val images
(concepts used, usage entropy in bits); the best epoch's per-concept counts go to `fsgr/codebook_usage.json` for `evaluate report`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from extract.concepts import ConceptCodebook
from shared.cache_batches import CacheBatches, caption_samples
from shared.checkpoint_files import load_checkpoint
from shared.config import Config
from shared.devices import autocast, resolve_device
from shared.feature_store import FeatureStore
from shared.karpathy import load_karpathy, split_records
from shared.atomic_files import write_json_atomic
from shared.manifest import current_state, decide, remove_manifest, require_current, write_manifest
from shared.models.caption_decoder import CaptionDecoder, DecoderDims, caption_loss
from shared.models.fsgr import FsgrEncoder, usage_summary
from shared.run_log import RunLog, require_tensorboard
from shared.training_schedule import (RunWarnings, lr_factor, open_resume_point,
                                      resume_state, save_atomic, warmup_warning)
from shared.validation import validation_scores
from shared.stages import (clip_stage, concepts_stage, fit_stage, fsgr_dir, vocab_stage)
from shared.vocabulary import Vocabulary

CLIP_ARRAYS = ["patch_tokens", "image_embed"]
USAGE_FILE = "codebook_usage.json"


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
    """The FSGR encoder sized from config + the cache it reads; `logit_scale` is the CLIP
    model's (`clip_logit_scale`), frozen unless `fsgr.learn_logit_scale`."""
    f = config.fsgr
    return FsgrEncoder(meta.clip_width, meta.embed_dim, f.d_model, f.n_layers, f.n_heads, f.d_ff,
                       f.dropout, f.top_k, f.gumbel_tau, visual_proj, concept_embeddings,
                       logit_scale, f.learn_logit_scale)


def clip_logit_scale(attrs: dict) -> float:
    """`logit_scale.exp()` of the run's CLIP (100 for OpenAI's weights), as `extract clip`
    recorded it in the CLIP store's attributes."""
    if "logit_scale" not in attrs:
        raise RuntimeError("the CLIP cache does not record its model's logit scale (written "
                           "by older code): run python -m extract clip --force")
    return float(attrs["logit_scale"])


class FsgrCaptioner(nn.Module):
    """FSGR encoder + auxiliary caption decoder, trained together by `extract fit`."""

    def __init__(self, encoder: FsgrEncoder, decoder: CaptionDecoder, grid: tuple[int, int]):
        super().__init__()
        self.encoder, self.decoder, self.grid = encoder, decoder, grid

    def forward(self, patch_tokens: torch.Tensor, image_embed: torch.Tensor,
                tokens: torch.Tensor):
        fsgr = self.encoder(patch_tokens, image_embed, self.grid)
        return self.decoder(fsgr.features, tokens[:, :-1]), fsgr


def fit_fsgr(config: Config, force: bool = False, progress: bool = True) -> list[str]:
    """Fit (or resume, or skip) the FSGR modules; returns the lines to print."""
    require_tensorboard(config.train.tensorboard)
    spec = fit_stage(config)
    require_current(clip_stage(config), config, "python -m extract clip")
    require_current(concepts_stage(config), config, "python -m extract concepts")
    require_current(vocab_stage(config), config, "python -m extract vocab")
    decision = decide(spec, config, force=force)
    if decision.up_to_date:
        return [f"extract fit: {decision.reason}"]
    torch.manual_seed(config.fsgr.seed)
    device = resolve_device(config.clip.device)
    remove_manifest(spec.output)  # from here on the old output is no longer complete
    state = current_state(spec, config)
    out_dir = fsgr_dir(config)
    out_dir.mkdir(parents=True, exist_ok=True)

    store_path = clip_stage(config).output
    with FeatureStore.open(store_path) as store:
        attrs = store.attrs
        store_ids, valid = store.read("image_ids"), store.read("valid")
        visual_proj = torch.from_numpy(store.read("visual_proj"))
    codebook = ConceptCodebook.load(concepts_stage(config).output)
    meta = FsgrMeta(attrs["model"], tuple(attrs["grid"]), attrs["width"], attrs["embed_dim"],
                    state["inputs"][concepts_stage(config).name], len(codebook.words))
    vocab = Vocabulary.load(vocab_stage(config).output)
    scale = clip_logit_scale(attrs)
    encoder = build_encoder(config, meta, visual_proj, torch.from_numpy(codebook.embeddings),
                            scale)
    dims = DecoderDims(d_visual=config.fsgr.d_model, vocab_size=len(vocab),
                       d_model=config.decoder.d_model, n_heads=config.decoder.n_heads,
                       n_dec_layers=config.decoder.n_dec_layers, d_ff=config.decoder.d_ff,
                       dropout=config.decoder.dropout,
                       max_len=config.data.max_caption_words + 2)
    model = FsgrCaptioner(encoder, CaptionDecoder(dims), meta.grid).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.fsgr.lr, betas=(0.9, 0.98))

    records = load_karpathy(config.data.karpathy_json, config.data.image_root)
    max_words = config.data.max_caption_words
    train_records = split_records(records, "train")
    val_records = split_records(records, "val")
    val = caption_samples(store_ids, valid, val_records, vocab, max_words)
    val_images = caption_samples(store_ids, valid, val_records, vocab, max_words, per_image=1)
    if len(val) == 0:
        raise ValueError("extract fit needs readable val images in the cache")
    bs = config.fsgr.batch_size

    def train_batches(epoch: int) -> CacheBatches:
        """This epoch's `fsgr.captions_per_image` random captions of every training image."""
        pick = np.random.default_rng([config.fsgr.seed, epoch])
        samples = caption_samples(store_ids, valid, train_records, vocab, max_words,
                                  config.fsgr.captions_per_image, pick)
        if len(samples) == 0:
            raise ValueError("extract fit needs readable train images in the cache")
        return CacheBatches(store_path, CLIP_ARRAYS, samples, bs, seed=config.fsgr.seed,
                            shuffle_buffer=config.train.shuffle_buffer)
    val_batches = CacheBatches(store_path, CLIP_ARRAYS, val, bs, shuffle=False)
    val_image_batches = CacheBatches(store_path, CLIP_ARRAYS, val_images, bs, shuffle=False)
    references = {r.image_id: list(r.captions) for r in val_records}

    last, best = out_dir / "last.pt", out_dir / "best.pt"
    run_log = RunLog(out_dir / "fit_log.jsonl", "fit", config.train.tensorboard)
    usage_path = out_dir / USAGE_FILE
    usage_path.unlink(missing_ok=True)  # written again with fsgr.pt
    start_epoch, step, best_cider = 0, 0, -math.inf
    n_concepts = len(codebook.words)
    lines = [f"extract fit: patch-concept logit scale {scale:.2f} (CLIP's, "
             + ("learnable)" if config.fsgr.learn_logit_scale else "frozen)")]
    warnings = RunWarnings()
    rotation, _, ckpt = open_resume_point(last, state["identity"], force, model, optimizer,
                                          device, warnings)
    if ckpt is not None:
        start_epoch, step, best_cider = ckpt["epoch"] + 1, ckpt["step"], ckpt["best_cider"]
        lines.append(f"extract fit: resuming after epoch {ckpt['epoch'] + 1}")
    if start_epoch == 0:
        run_log.start_over()
    else:  # epochs after the resume point are logged again
        run_log.resume(lambda r: r.get("epoch", 0) > start_epoch, step)
    generator = torch.Generator().manual_seed(config.fsgr.seed)
    weight, temperature = config.fsgr.contrastive_weight, config.fsgr.contrastive_temperature

    for epoch in range(start_epoch, config.fsgr.epochs):
        model.train()
        started, sums, n_batches = time.perf_counter(), {"xe": 0.0, "contrastive": 0.0}, 0
        # straight-through Gumbel sample == argmax assignment, over the epoch's train patches
        agree, seen = torch.zeros((), dtype=torch.long, device=device), 0
        batches = train_batches(epoch)
        if epoch == start_epoch:
            warnings.add(warmup_warning("fsgr.warmup_steps", config.fsgr.warmup_steps,
                                        config.fsgr.epochs, len(batches)))
        bar = tqdm(batches.epoch(epoch), total=len(batches), disable=not progress,
                   desc=f"extract fit {epoch + 1}/{config.fsgr.epochs}", unit="batch")
        for batch in bar:
            for group in optimizer.param_groups:
                group["lr"] = config.fsgr.lr * lr_factor(
                    step, epoch, config.fsgr.warmup_steps, config.train.decay_every,
                    config.train.decay_factor)
            tokens = batch["tokens"].to(device)
            with autocast(device, config.train.precision):
                logits, fsgr = model(batch["patch_tokens"].to(device),
                                     batch["image_embed"].to(device), tokens)
                xe = caption_loss(logits.float(), tokens[:, 1:])
                con = FsgrEncoder.contrastive_loss(fsgr, temperature, config.fsgr.max_anchors,
                                                   generator)
            loss = xe + weight * con
            if not torch.isfinite(loss):
                raise RuntimeError(f"extract fit: loss is {float(loss)} at epoch {epoch + 1} "
                                   f"step {step}; {last} keeps the last good epoch")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            optimizer.step()
            step += 1
            n_batches += 1
            sums["xe"] += float(xe.detach())
            sums["contrastive"] += float(con.detach())
            agree += (fsgr.codebook_index == fsgr.argmax_index).sum()
            seen += fsgr.codebook_index.numel()
            bar.set_postfix(xe=f"{sums['xe'] / n_batches:.3f}",
                            con=f"{sums['contrastive'] / n_batches:.3f}")
        model.eval()
        # argmax (eval) assignments of every patch of the val images, per concept
        usage = torch.zeros(n_concepts, dtype=torch.long, device=device)

        def words_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            fsgr = model.encoder(batch["patch_tokens"].to(device),
                                 batch["image_embed"].to(device), model.grid)
            usage.add_(torch.bincount(fsgr.codebook_index.flatten(), minlength=n_concepts))
            return model.decoder.greedy(fsgr.features, vocab.bos_id, vocab.eos_id,
                                        config.eval.max_length)

        metrics = validation_scores(
            val_batches, val_image_batches,
            lambda batch, tokens: model(batch["patch_tokens"].to(device),
                                        batch["image_embed"].to(device), tokens)[0],
            words_of, references, store_ids, vocab, device)
        counts = usage.cpu().numpy()
        record = {"epoch": epoch + 1, "step": step, "seconds": time.perf_counter() - started,
                  "train_xe": sums["xe"] / max(n_batches, 1),
                  "train_contrastive": sums["contrastive"] / max(n_batches, 1), **metrics,
                  "gumbel_argmax_agreement": int(agree) / max(seen, 1),
                  "logit_scale": float(model.encoder.quantizer.scale.detach()),
                  **usage_summary(counts), "codebook_size": n_concepts, **warnings.take()}
        run_log.write(record)
        is_best = metrics["val_cider"] > best_cider
        best_cider = max(best_cider, metrics["val_cider"])
        ckpt = {**resume_state(state["identity"], model, optimizer, device),
                "epoch": epoch, "step": step, "best_cider": best_cider}
        if is_best:
            save_atomic({"model": model.state_dict(), "epoch": epoch, **metrics,
                         "logit_scale": record["logit_scale"],
                         "codebook_counts": torch.from_numpy(counts)}, best)
        rotation.before_save()
        save_atomic(ckpt, last)
        lines.append(f"extract fit: epoch {epoch + 1}: train xe {record['train_xe']:.3f}, "
                     f"contrastive {record['train_contrastive']:.3f}, val loss "
                     f"{metrics['val_loss']:.3f}, val CIDEr-D {metrics['val_cider']:.3f}"
                     + (" (best)" if is_best else "")
                     + f"; Gumbel = argmax on {record['gumbel_argmax_agreement']:.1%} of train "
                     f"patches; val codebook usage {record['codebook_used']}/{n_concepts} "
                     f"concepts, entropy {record['codebook_entropy_bits']:.2f} bits")
    run_log.close()

    best_ckpt = load_checkpoint(best, "FSGR fit checkpoint", "re-run `python -m extract fit "
                                "--force`", keys=("model", "epoch", "val_loss", "val_cider"))
    encoder_state = {k[len("encoder."):]: v for k, v in best_ckpt["model"].items()
                     if k.startswith("encoder.")}
    save_atomic({"encoder": encoder_state, "meta": asdict(meta),
                  "config": config.select(["fsgr"]), "epoch": best_ckpt["epoch"],
                  "val_loss": best_ckpt["val_loss"], "val_cider": best_ckpt["val_cider"]},
                 spec.output)
    counts = best_ckpt.get("codebook_counts")
    if counts is not None:  # absent only in a best.pt of a run resumed from older code
        counts = counts.numpy()
        write_json_atomic(usage_path, {
            "fit_identity": state["identity"], "epoch": best_ckpt["epoch"] + 1,
            "split": "val", "assignment": "argmax", "entropy_unit": "bits",
            **usage_summary(counts), "codebook_size": n_concepts,
            "counts": [int(c) for c in counts]})
    write_manifest(spec, config, {"best_epoch": best_ckpt["epoch"] + 1,
                                  "val_loss": best_ckpt["val_loss"],
                                  "val_cider": best_ckpt["val_cider"],
                                  "logit_scale": best_ckpt.get("logit_scale", scale),
                                  **warnings.summary()},
                   state=state)
    lines.append(f"extract fit: wrote {spec.output} (best epoch {best_ckpt['epoch'] + 1}, "
                 f"val CIDEr-D {best_ckpt['val_cider']:.3f})")
    return lines


def load_fsgr(config: Config, device: torch.device) -> tuple[FsgrEncoder, FsgrMeta]:
    """The fitted FSGR encoder of this run (in eval mode) and what it was fitted on."""
    path = fit_stage(config).output
    if not path.exists():
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
