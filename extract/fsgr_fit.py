"""`extract fit`: train the FSGR modules on the CLIP cache (CLIP itself stays frozen).

Loss = caption cross-entropy of an auxiliary Transformer decoder (the same `CaptionDecoder`
the train stage uses, here without memory) + `fsgr.contrastive_weight` x the local
supervised-contrastive loss over the patch embeddings of the batch (`FsgrFit`, the
objective). The epochs are `shared.training_loop`'s: streaming from the cache, validation each
epoch (val loss and greedy CIDEr-D), `last.pt` / `best.pt` in `runs/<dataset>/fsgr/`, resume
from `last.pt` (or from `last.prev.pt`, the epoch before, when `last.pt` is unreadable).
Finally `fsgr.pt` (the best FSGR encoder weights + what it was fitted on: rebuilt by
`shared.models.factory.load_fsgr`) is written with its manifest. A `fsgr.warmup_steps`
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

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from extract.concepts import ConceptCodebook
from shared.atomic_files import write_json_atomic
from shared.cache_batches import CacheBatches, caption_samples
from shared.checkpoint_files import load_checkpoint, save_atomic
from shared.config import Config
from shared.devices import autocast, resolve_device
from shared.feature_store import FeatureStore
from shared.karpathy import load_karpathy, split_records
from shared.manifest import require_current
from shared.models.caption_decoder import CaptionDecoder, caption_loss
from shared.models.factory import FsgrMeta, build_encoder, decoder_dims
from shared.models.fsgr import FsgrEncoder, usage_summary
from shared.run_log import RunLog, require_tensorboard
from shared.stage_runner import StageResult, StageRun, run_stage
from shared.stages import (clip_stage, codebook_usage_path, concepts_stage, fit_stage, fsgr_dir,
                           vocab_stage)
from shared.training_loop import LoopSettings, TrainingLoop
from shared.training_schedule import RunWarnings, lr_factor, warmup_warning
from shared.validation import validation_scores
from shared.vocabulary import Vocabulary

CLIP_ARRAYS = ["patch_tokens", "image_embed"]


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


class FsgrFit:
    """The `extract fit` objective: auxiliary caption cross-entropy + the weighted local
    contrastive loss. Each epoch trains on `fsgr.captions_per_image` random captions of every
    training image; validation also counts the argmax codebook concept of every val patch."""

    label, lr_key, train_mode = "extract fit", "fsgr.lr", True

    def __init__(self, config: Config, model: FsgrCaptioner, store_path: Any,
                 store_ids: np.ndarray, valid: np.ndarray, vocab: Vocabulary,
                 n_concepts: int, device: torch.device) -> None:
        self.config, self.module, self.device = config, model, device
        self.store_path, self.store_ids, self.valid, self.vocab = store_path, store_ids, \
            valid, vocab
        self.n_concepts, self.grad_clip = n_concepts, config.train.grad_clip
        records = load_karpathy(config.data.karpathy_json, config.data.image_root)
        self.train_records = split_records(records, "train")
        val_records = split_records(records, "val")
        max_words, bs = config.data.max_caption_words, config.fsgr.batch_size
        val = caption_samples(store_ids, valid, val_records, vocab, max_words)
        if len(val) == 0:
            raise ValueError("extract fit needs readable val images in the cache")
        val_images = caption_samples(store_ids, valid, val_records, vocab, max_words,
                                     per_image=1)
        self.val_batches = CacheBatches(store_path, CLIP_ARRAYS, val, bs, shuffle=False)
        self.val_image_batches = CacheBatches(store_path, CLIP_ARRAYS, val_images, bs,
                                              shuffle=False)
        self.references = {r.image_id: list(r.captions) for r in val_records}
        self.generator = torch.Generator().manual_seed(config.fsgr.seed)
        self.counts = np.zeros(n_concepts, np.int64)
        self.scores: dict[str, float] = {}

    def lr(self, step: int, epoch: int) -> float:
        c = self.config
        return c.fsgr.lr * lr_factor(step, epoch, c.fsgr.warmup_steps, c.train.decay_every,
                                     c.train.decay_factor)

    def epoch_batches(self, epoch: int) -> CacheBatches:
        """This epoch's `fsgr.captions_per_image` random captions of every training image."""
        c = self.config
        pick = np.random.default_rng([c.fsgr.seed, epoch])
        samples = caption_samples(self.store_ids, self.valid, self.train_records, self.vocab,
                                  c.data.max_caption_words, c.fsgr.captions_per_image, pick)
        if len(samples) == 0:
            raise ValueError("extract fit needs readable train images in the cache")
        return CacheBatches(self.store_path, CLIP_ARRAYS, samples, c.fsgr.batch_size,
                            seed=c.fsgr.seed, shuffle_buffer=c.train.shuffle_buffer)

    def batches(self, epoch: int) -> tuple[Iterable[dict], int]:
        batches = self.epoch_batches(epoch)
        return batches.epoch(epoch), len(batches)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        c, device = self.config.fsgr, self.device
        tokens = batch["tokens"].to(device)
        with autocast(device, self.config.train.precision):
            logits, fsgr = self.module(batch["patch_tokens"].to(device),
                                       batch["image_embed"].to(device), tokens)
            xe = caption_loss(logits.float(), tokens[:, 1:])
            con = FsgrEncoder.contrastive_loss(fsgr, c.contrastive_temperature, c.max_anchors,
                                               self.generator)
        # straight-through Gumbel sample == argmax assignment, over the epoch's train patches
        agree = (fsgr.codebook_index == fsgr.argmax_index).sum()
        return xe + c.contrastive_weight * con, {
            "xe": float(xe.detach()), "contrastive": float(con.detach()),
            "agree": float(agree), "patches": float(fsgr.codebook_index.numel())}

    def epoch_record(self, sums: dict[str, float], steps: int) -> dict[str, Any]:
        return {"train_xe": sums.get("xe", 0.0) / max(steps, 1),
                "train_contrastive": sums.get("contrastive", 0.0) / max(steps, 1),
                "gumbel_argmax_agreement": sums.get("agree", 0.0) / max(sums.get("patches", 0), 1),
                "logit_scale": float(self.module.encoder.quantizer.scale.detach()),
                "codebook_size": self.n_concepts}

    def validate(self) -> dict[str, float]:
        """Val loss and greedy CIDEr-D of the auxiliary decoder, and the codebook usage of the
        argmax (eval) assignments of every val patch."""
        model, device, vocab = self.module, self.device, self.vocab
        model.eval()
        usage = torch.zeros(self.n_concepts, dtype=torch.long, device=device)

        def words_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            fsgr = model.encoder(batch["patch_tokens"].to(device),
                                 batch["image_embed"].to(device), model.grid)
            usage.add_(torch.bincount(fsgr.codebook_index.flatten(), minlength=self.n_concepts))
            return model.decoder.greedy(fsgr.features, vocab.bos_id, vocab.eos_id,
                                        self.config.eval.max_length)

        self.scores = validation_scores(
            self.val_batches, self.val_image_batches,
            lambda batch, tokens: model(batch["patch_tokens"].to(device),
                                        batch["image_embed"].to(device), tokens)[0],
            words_of, self.references, self.store_ids, vocab, device)
        self.counts = usage.cpu().numpy()
        return {**self.scores, **usage_summary(self.counts)}

    def epoch_line(self, record: dict[str, Any]) -> str:
        return (f"train xe {record['train_xe']:.3f}, contrastive "
                f"{record['train_contrastive']:.3f}, val loss {record['val_loss']:.3f}, val "
                f"CIDEr-D {record['val_cider']:.3f}; Gumbel = argmax on "
                f"{record['gumbel_argmax_agreement']:.1%} of train patches; val codebook usage "
                f"{record['codebook_used']}/{self.n_concepts} concepts, entropy "
                f"{record['codebook_entropy_bits']:.2f} bits")

    def best_entries(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**self.scores, "logit_scale": record["logit_scale"],
                "codebook_counts": torch.from_numpy(self.counts)}


def fit_fsgr(config: Config, force: bool = False, progress: bool = True) -> StageResult:
    """Fit (or resume, or skip) the FSGR modules."""
    require_tensorboard(config.train.tensorboard)
    spec = fit_stage(config)
    require_current(clip_stage(config), config, "python -m extract clip")
    require_current(concepts_stage(config), config, "python -m extract concepts")
    require_current(vocab_stage(config), config, "python -m extract vocab")
    return run_stage(spec, config, lambda run: _fit(run, force, progress), force=force)


def _fit(run: StageRun, force: bool, progress: bool) -> dict[str, Any]:
    config, spec = run.config, run.spec
    torch.manual_seed(config.fsgr.seed)
    device = resolve_device(config.run.device)
    out_dir = fsgr_dir(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    store_path = clip_stage(config).output
    with FeatureStore.open(store_path) as store:
        attrs = store.attrs
        store_ids, valid = store.read("image_ids"), store.read("valid")
        visual_proj = torch.from_numpy(store.read("visual_proj"))
    codebook = ConceptCodebook.load(concepts_stage(config).output)
    n_concepts = len(codebook.words)
    meta = FsgrMeta(attrs["model"], tuple(attrs["grid"]), attrs["width"], attrs["embed_dim"],
                    run.state["inputs"][concepts_stage(config).name], n_concepts)
    vocab = Vocabulary.load(vocab_stage(config).output)
    scale = clip_logit_scale(attrs)
    encoder = build_encoder(config, meta, visual_proj, torch.from_numpy(codebook.embeddings),
                            scale)
    decoder = CaptionDecoder(decoder_dims(config, config.fsgr.d_model, len(vocab), memory=False))
    model = FsgrCaptioner(encoder, decoder, meta.grid).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.fsgr.lr, betas=(0.9, 0.98))
    objective = FsgrFit(config, model, store_path, store_ids, valid, vocab, n_concepts, device)

    usage_path = codebook_usage_path(config)
    usage_path.unlink(missing_ok=True)  # written again with fsgr.pt
    run.say(f"patch-concept logit scale {scale:.2f} (CLIP's, "
            + ("learnable)" if config.fsgr.learn_logit_scale else "frozen)"))
    warnings = RunWarnings()
    log = RunLog(out_dir / "fit_log.jsonl", "fit", config.train.tensorboard)
    settings = LoopSettings(out_dir, run.identity, config.fsgr.epochs, None, log,
                            progress=progress)
    loop = TrainingLoop(objective, optimizer, settings, device, warnings=warnings)
    start_epoch, ckpt = loop.start(force, resume=False)
    if ckpt is not None and "contrastive_generator" in ckpt:  # absent in older last.pt files
        objective.generator.set_state(ckpt["contrastive_generator"].to("cpu", torch.uint8))
    warnings.add(warmup_warning("fsgr.warmup_steps", config.fsgr.warmup_steps,
                                config.fsgr.epochs, len(objective.epoch_batches(start_epoch))))
    # the anchors' sampler continues where it stopped, so a resumed fit equals an uninterrupted one
    state = lambda: {"contrastive_generator": objective.generator.get_state()}  # noqa: E731
    run.lines.extend(loop.run(start_epoch, state).lines)

    best = load_checkpoint(loop.best, "FSGR fit checkpoint", "re-run `python -m extract fit "
                           "--force`", keys=("model", "epoch", "val_loss", "val_cider"))
    encoder_state = {k[len("encoder."):]: v for k, v in best["model"].items()
                     if k.startswith("encoder.")}
    save_atomic({"encoder": encoder_state, "meta": asdict(meta),
                 "config": config.select(["fsgr"]), "epoch": best["epoch"],
                 "val_loss": best["val_loss"], "val_cider": best["val_cider"]}, spec.output)
    counts = best.get("codebook_counts")
    if counts is not None:  # absent only in a best.pt of a run resumed from older code
        counts = counts.numpy()
        write_json_atomic(usage_path, {
            "fit_identity": run.identity, "epoch": best["epoch"] + 1,
            "split": "val", "assignment": "argmax", "entropy_unit": "bits",
            **usage_summary(counts), "codebook_size": n_concepts,
            "counts": [int(c) for c in counts]})
    run.say(f"wrote {spec.output} (best epoch {best['epoch'] + 1}, val CIDEr-D "
            f"{best['val_cider']:.3f})")
    return {"best_epoch": best["epoch"] + 1, "val_loss": best["val_loss"],
            "val_cider": best["val_cider"], "logit_scale": best.get("logit_scale", scale),
            **warnings.summary()}
