"""The demo's tiny CLIP: contrastive training on the demo train split, then retrieval recall.

The model is an open_clip config shipped in `shared/model_configs/` (`demo.clip_model`); it is
trained with the standard CLIP InfoNCE loss (learnable logit scale, AdamW, warm-up + cosine)
on train+restval images with, per image and step, one random reference caption or, with
probability `demo.clip_object_text_rate`, the plain list of its objects ("a star and a heart",
from the instance annotations), as web alt-texts often are. The object lists are what makes a
minute of training learn the shapes: in-batch negatives rarely share their colours, so the
captions alone are matched by colour and position. The weights go
to `clip.pretrained` (a file path) and are loaded back through `create_clip`, exactly as a
user's own checkpoint would be, to measure image<->text recall on the demo test split.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from shared.clip_model import (ClipBundle, create_clip, is_checkpoint_path, repo_model_config,
                               save_clip_weights)
from shared.config import Config, ConfigError
from shared.datasets.demo_captions import article, join_phrases
from shared.datasets.demo_writer import DemoPaths, load_instances
from shared.images import load_rgb
from shared.karpathy import ImageRecord, load_karpathy, split_records
from shared.atomic_files import write_json_atomic
from shared.manifest import StageSpec
from shared.stage_runner import StageResult, StageRun, run_stage

CLIP_KEYS = ["demo.clip_model", "demo.clip_epochs", "demo.clip_batch_size", "demo.clip_lr",
             "demo.clip_object_text_rate", "demo.seed"]
RECALL_KS = (1, 5, 10)
WEIGHT_DECAY = 0.1
WARMUP_FRACTION = 0.1
MAX_LOGIT_SCALE = math.log(100.0)


def weights_path(config: Config) -> Path:
    """Where the tiny CLIP weights go: `clip.pretrained`, which must be a file path."""
    pretrained = config.clip.pretrained
    if not is_checkpoint_path(pretrained):
        raise ConfigError(f"config key 'clip.pretrained' must be a checkpoint file path for the "
                          f"demo (e.g. \"data/demo/tiny_clip.pt\"), got {pretrained!r}")
    return Path(pretrained)


def metrics_path(weights: str | Path) -> Path:
    """`<weights stem>_metrics.json` beside the weights."""
    weights = Path(weights)
    return weights.with_name(weights.stem + "_metrics.json")


def clip_stage(config: Config) -> StageSpec:
    """The tiny CLIP weights as a stage output; input: the generated demo dataset."""
    model_json = repo_model_config(config.demo.clip_model)
    return StageSpec("datasets.demo_clip", weights_path(config), CLIP_KEYS,
                     [Path(config.demo.output_dir), *([model_json] if model_json else [])],
                     command="python -m shared.datasets prepare", label="tiny CLIP")


def load_images(records: list[ImageRecord], bundle: ClipBundle, progress: bool = False
                ) -> torch.Tensor:
    """Decode and preprocess every image once, with the model's own transform: [N, 3, H, W]."""
    items = tqdm(records, desc="decode images", disable=not progress, leave=False)
    return torch.stack([bundle.preprocess(load_rgb(r.path, bundle.image_size)) for r in items])


def object_texts(records: list[ImageRecord], instances_json: str | Path) -> list[str]:
    """Per record, its objects' category names as one short text: 'a star and a heart'."""
    data = load_instances(instances_json)
    names = {c["id"]: c["name"] for c in data["categories"]}
    held: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        held.setdefault(int(ann["image_id"]), []).append(names[ann["category_id"]])
    texts = []
    for record in records:
        if not held.get(record.image_id):
            raise ValueError(f"{instances_json}: image {record.image_id} has no objects")
        texts.append(join_phrases([f"{article(n)} {n}" for n in held[record.image_id]]))
    return texts


def tokenize_captions(records: list[ImageRecord], bundle: ClipBundle
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """All captions as tokens [T, L] and, per caption, the index of its image [T]."""
    texts = [c for r in records for c in r.captions]
    owner = torch.tensor([i for i, r in enumerate(records) for _ in r.captions])
    return bundle.tokenizer(texts), owner


@contextlib.contextmanager
def compact_token_embedding(model: torch.nn.Module, tokens: torch.Tensor
                            ) -> Iterator[torch.Tensor]:
    """Train only the embedding rows of token ids that occur in `tokens`.

    The 49408-row token embedding is swapped for one holding just the used rows (ids remapped
    in ascending order, so the end-of-text token keeps the largest id that argmax pooling
    looks for); on exit the trained rows are written back. Same maths for the used rows,
    without an optimizer step over 6M untouched parameters. Yields the remapped tokens.
    """
    full = model.token_embedding
    used = torch.unique(tokens)
    compact = torch.nn.Embedding(len(used), full.embedding_dim)
    with torch.no_grad():
        compact.weight.copy_(full.weight[used])
    model.token_embedding = compact
    try:
        yield torch.searchsorted(used, tokens)
    finally:
        with torch.no_grad():
            full.weight[used] = compact.weight
        model.token_embedding = full


def _param_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = param.ndim < 2 or "logit_scale" in name or "bias" in name or "ln" in name
        (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0}]


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
              logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, text) pairs (normalised inputs)."""
    logits = logit_scale.exp() * image_emb @ text_emb.T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _check_knobs(epochs: int, batch_size: int, lr: float) -> None:
    if epochs < 1:
        raise ConfigError(f"config key 'demo.clip_epochs' must be >= 1, got {epochs}")
    if batch_size < 2:
        raise ConfigError(f"config key 'demo.clip_batch_size' must be >= 2, got {batch_size}")
    if lr <= 0:
        raise ConfigError(f"config key 'demo.clip_lr' must be > 0, got {lr}")


def train_contrastive(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor,
                      owner: torch.Tensor, epochs: int, batch_size: int, lr: float,
                      seed: int = 0, progress: bool = True,
                      object_tokens: torch.Tensor | None = None, object_rate: float = 0.0
                      ) -> list[float]:
    """Train `model` in place on (image, random one of its captions) pairs, or with
    probability `object_rate` (image, its object list `object_tokens[i]`); mean loss/epoch."""
    _check_knobs(epochs, batch_size, lr)
    batch_size = min(batch_size, len(images))
    every = tokens if object_tokens is None else torch.cat([tokens, object_tokens])
    with compact_token_embedding(model, every) as compact:
        captions, objects = compact[:len(tokens)], compact[len(tokens):]
        history = _run_epochs(model, images, captions, owner, epochs, batch_size, lr,
                              seed, progress, objects if object_rate > 0 else None,
                              object_rate)
    model.eval()
    return history


def _run_epochs(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor,
                owner: torch.Tensor, epochs: int, batch_size: int, lr: float, seed: int,
                progress: bool, object_tokens: torch.Tensor | None = None,
                object_rate: float = 0.0) -> list[float]:
    n = len(images)
    steps_per_epoch = max(1, n // batch_size)
    total = steps_per_epoch * epochs
    warmup = max(1, int(WARMUP_FRACTION * total))
    optimizer = torch.optim.AdamW(_param_groups(model), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    gen = torch.Generator().manual_seed(seed)
    caption_lists = [torch.nonzero(owner == i).flatten() for i in range(n)]
    counts = torch.tensor([len(c) for c in caption_lists])
    starts = torch.cumsum(counts, 0) - counts
    order_by_owner = torch.cat(caption_lists)
    model.train()
    history: list[float] = []
    bar = tqdm(total=total, desc="tiny CLIP", disable=not progress, unit="step")
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        epoch_loss = 0.0
        for step in range(steps_per_epoch):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            pick = starts[idx] + (torch.rand(len(idx), generator=gen) * counts[idx]).long()
            text = tokens[order_by_owner[pick]]
            if object_tokens is not None:
                plain = torch.rand(len(idx), generator=gen) < object_rate
                text = torch.where(plain[:, None], object_tokens[idx], text)
            loss = clip_loss(model.encode_image(images[idx], normalize=True),
                             model.encode_text(text, normalize=True), model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            epoch_loss += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update(1)
        history.append(epoch_loss / steps_per_epoch)
    bar.close()
    return history


@torch.no_grad()
def embed(bundle: ClipBundle, images: torch.Tensor, tokens: torch.Tensor,
          batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image [N, E] and text [T, E] embeddings."""
    model = bundle.model.eval()
    img = torch.cat([model.encode_image(images[i:i + batch_size], normalize=True)
                     for i in range(0, len(images), batch_size)])
    txt = torch.cat([model.encode_text(tokens[i:i + batch_size], normalize=True)
                     for i in range(0, len(tokens), batch_size)])
    return img, txt


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, owner: torch.Tensor,
                     ks: tuple[int, ...] = RECALL_KS) -> dict[str, dict[str, float]]:
    """Recall@k both ways. Image->text: a hit if any of the image's captions is in its top k;
    text->image: a hit if the caption's own image is in its top k."""
    sims = image_emb @ text_emb.T
    n_images, n_texts = sims.shape
    i2t, t2i = {}, {}
    for k in ks:
        top_texts = sims.topk(min(k, n_texts), dim=1).indices
        i2t[f"R@{k}"] = (owner[top_texts] == torch.arange(n_images)[:, None]
                         ).any(1).float().mean().item()
        top_images = sims.T.topk(min(k, n_images), dim=1).indices
        t2i[f"R@{k}"] = (top_images == owner[:, None]).any(1).float().mean().item()
    return {"image_to_text": i2t, "text_to_image": t2i}


def chance_recall(owner: torch.Tensor, n_images: int,
                  ks: tuple[int, ...] = RECALL_KS) -> dict[str, dict[str, float]]:
    """Expected recall@k of a random ranking, for the same image/caption counts."""
    n_texts = len(owner)
    counts = torch.bincount(owner, minlength=n_images).tolist()
    i2t = {f"R@{k}": sum(1 - math.comb(n_texts - c, k) / math.comb(n_texts, k)
                         for c in counts) / n_images for k in ks}
    t2i = {f"R@{k}": min(k, n_images) / n_images for k in ks}
    return {"image_to_text": i2t, "text_to_image": t2i}


def evaluate_retrieval(bundle: ClipBundle, records: list[ImageRecord],
                       ks: tuple[int, ...] = RECALL_KS) -> dict[str, Any]:
    """Recall@k of `bundle` over `records` (each image against all their captions) + chance."""
    images = load_images(records, bundle)
    tokens, owner = tokenize_captions(records, bundle)
    image_emb, text_emb = embed(bundle, images, tokens)
    return {"n_images": len(records), "n_captions": len(owner),
            **retrieval_recall(image_emb, text_emb, owner, ks),
            "chance": chance_recall(owner, len(records), ks)}


def train_tiny_clip(config: Config, force: bool = False, progress: bool = True) -> StageResult:
    """Train, save and evaluate the demo CLIP unless up to date."""
    demo = config.demo
    _check_knobs(demo.clip_epochs, demo.clip_batch_size, demo.clip_lr)
    return run_stage(clip_stage(config), config, lambda run: _train(run, progress), force=force)


def _train(run: StageRun, progress: bool) -> dict[str, Any]:
    demo, output = run.config.demo, run.spec.output
    paths = DemoPaths(Path(demo.output_dir))
    records = load_karpathy(paths.karpathy_json, paths.image_root, check_images=True)
    train = split_records(records, "train")
    test = split_records(records, "test")

    torch.manual_seed(demo.seed)
    bundle = create_clip(demo.clip_model, pretrained="random", random_seed=demo.seed)
    start = time.perf_counter()
    images = load_images(train, bundle, progress)
    tokens, owner = tokenize_captions(train, bundle)
    objects = bundle.tokenizer(object_texts(train, paths.instances_json))
    losses = train_contrastive(bundle.model, images, tokens, owner, demo.clip_epochs,
                               demo.clip_batch_size, demo.clip_lr, demo.seed, progress,
                               objects, demo.clip_object_text_rate)
    train_seconds = time.perf_counter() - start
    save_clip_weights(bundle.model, output)

    trained = create_clip(demo.clip_model, pretrained=str(output))
    metrics = {"model": demo.clip_model, "weights": str(output),
               "train_images": len(train), "epochs": demo.clip_epochs,
               "train_seconds": round(train_seconds, 1),
               "loss_per_epoch": [round(v, 4) for v in losses], "split": "test",
               **evaluate_retrieval(trained, test)}
    write_json_atomic(metrics_path(output), metrics)
    run.say(f"trained on {len(train)} images in {train_seconds:.0f}s -> {output}; "
            f"{format_recall(metrics)}")
    return {k: metrics[k] for k in ("train_images", "train_seconds", "image_to_text",
                                    "text_to_image", "chance")}


def format_recall(metrics: dict[str, Any]) -> str:
    """'test i->t R@1 41.0% R@5 80.3% (chance 0.3%/1.7%), t->i ...' on one line."""
    parts = []
    for way, short in (("image_to_text", "i->t"), ("text_to_image", "t->i")):
        got = " ".join(f"{k} {100 * v:.1f}%" for k, v in metrics[way].items())
        chance = "/".join(f"{100 * v:.1f}%" for v in metrics["chance"][way].values())
        parts.append(f"{short} {got} (chance {chance})")
    return f"{metrics.get('split', 'test')} recall: " + "; ".join(parts)
