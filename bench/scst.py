"""Benchmark: where the time of one self-critical (SCST) step goes, reward computation above all.

The step is the trainer's own (`shared.training_loop.train_step` of `train.scst.SelfCritical`):
candidates without grad (`scst.candidates`,
`scst.n_samples` per image, max `eval.max_length` words; with the greedy baseline also the
greedy captions), CIDEr-D rewards (`CiderDReward.score_ids`) and baselines, then the
teacher-forced forward with grad, loss, backward, gradient clipping and Adam. Memory-bank
collection and prototype refreshes are not part of it.

The decoder is `shared.models.factory.build_decoder` of `configs/demo.toml` (plus `--set`
overrides) with random weights; with `memory.self` on, `memory.n_prototypes` random prototypes are
installed in every layer. Visual tokens are random ([images, --patches, --dim]). Rewards use the
COCO-like synthetic training set of `bench/cider.py` (`--images` x 5 references, seeded) and a
vocabulary of its words seen at least 5 times; the <eos> logit is scaled (`--eos-scale`) so the
random decoder's captions end at varied lengths instead of always running to the maximum.
Each of `--steps` timed steps (after one warm-up) uses `--batch-images` distinct training
images. Reports ms per step of each part and the share of the step spent in rewards; and, side
by side on the same candidates, the time pycocoevalcap's `CiderScorer` (with the same training
document frequencies, `bench/cider.py`) takes for them and the share it would have had (its
rewards are checked equal to ours to 1e-6).

    .venv/bin/python -m bench.scst [--batch-images 50] [--steps 10] [--set scst.n_samples=5]
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from bench.cider import pycoco_fixed_df_reward, pycoco_training_df, synthetic_training_set
from bench.common import (add_overrides, config_path, cuda_sync, install_random_prototypes,
                          make_parser, print_report, timed)
from shared.cider_reward import CiderDReward, ids_to_words  # noqa: E402
from shared.config import Config, load_config
from shared.devices import resolve_device
from shared.vocabulary import build_vocabulary
from shared.training_loop import train_step  # noqa: E402
from train.scst import SelfCritical, TeacherForced  # noqa: E402
from shared.models.factory import build_decoder


def measure_scst_step(config: Config, device: torch.device, batch_images: int = 50,
                      steps: int = 10, images: int = 5000, vocab_size: int = 2000,
                      patches: int = 64, dim: int = 128, eos_scale: float = 10.0,
                      seed: int = 0) -> dict:
    """Time `steps` SCST steps (after one warm-up) of `config`'s decoder on `device` with
    random visual tokens [batch_images, patches, dim] and the synthetic training references;
    returns ms per step of each part, the reward share, and pycocoevalcap's on the same
    candidates (raises SystemExit when the two rewards differ by more than 1e-6)."""
    refs, _, _ = synthetic_training_set(images, 5, vocab_size, seed)
    vocab = build_vocabulary((r for rs in refs.values() for r in rs), min_count=5)
    reward, build_s = timed(lambda: CiderDReward.from_references(refs))

    torch.manual_seed(seed)
    decoder = build_decoder(config, dim, len(vocab)).to(device)
    with torch.no_grad():
        decoder.head.weight[vocab.eos_id] *= eos_scale
    if config.memory.self:
        install_random_prototypes(decoder, config, device)
    decoder.eval()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=config.scst.lr, betas=(0.9, 0.98))
    rng = np.random.default_rng(seed)
    ids = np.array(sorted(refs))
    objective = SelfCritical(config, decoder, TeacherForced(decoder), "features", ids, reward,
                             vocab, device)

    pycoco_reward = pycoco_fixed_df_reward(refs, *pycoco_training_df(refs))
    totals = {"sample": 0.0, "reward": 0.0, "update": 0.0, "step": 0.0, "pycoco_reward": 0.0}
    words = candidates = 0
    mean_reward = 0.0
    for step in range(steps + 1):
        rows = rng.choice(len(ids), size=batch_images, replace=False)
        image_ids = ids[rows]
        batch = {"features": torch.randn(batch_images, patches, dim, device=device),
                 "rows": torch.from_numpy(rows)}
        cuda_sync(device)
        started = time.perf_counter()
        metrics = train_step(objective, optimizer, batch)
        cuda_sync(device)
        result = objective.last
        elapsed = time.perf_counter() - started
        if step == 0:
            continue  # warm-up
        texts = ids_to_words(result.words, vocab.words, vocab.eos_id, vocab.pad_id)
        started = time.perf_counter()
        theirs = pycoco_reward(np.repeat(image_ids, config.scst.n_samples), texts)
        totals["pycoco_reward"] += time.perf_counter() - started
        if not np.allclose(theirs, result.rewards.reshape(-1), rtol=0.0, atol=1e-6):
            raise SystemExit("CIDEr-D reward differs from pycocoevalcap's on the same candidates")
        totals["sample"] += metrics["sample_seconds"]
        totals["reward"] += metrics["reward_seconds"]
        totals["update"] += metrics["step_seconds"] - metrics["sample_seconds"] \
            - metrics["reward_seconds"]
        totals["step"] += elapsed
        words += int(metrics["words"])
        candidates += result.rewards.size
        mean_reward += float(result.rewards.sum())
    per_step = {f"{k}_ms_per_step": round(1000 * v / steps, 1) for k, v in totals.items()}
    with_pycoco = totals["step"] - totals["reward"] + totals["pycoco_reward"]
    sc = config.scst
    return {
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "d_model": config.decoder.d_model,
        "layers": config.decoder.n_dec_layers, "vocab": len(vocab),
        "prototypes": config.memory.n_prototypes if config.memory.self else 0,
        "images_per_step": batch_images, "candidates": sc.candidates,
        "n_samples": sc.n_samples, "baseline": sc.baseline,
        "loss_normalization": sc.loss_normalization,
        "max_length": config.eval.max_length, "steps": steps,
        "reward_build_seconds": round(build_s, 2),
        "mean_words_per_candidate": round(words / max(candidates, 1), 1),
        "mean_reward": round(mean_reward / max(candidates, 1), 4), **per_step,
        "reward_share": round(totals["reward"] / totals["step"], 4),
        "pycoco_reward_share": round(totals["pycoco_reward"] / with_pycoco, 4)}


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--config", default=str(config_path("demo")))
    add_overrides(parser, help="config override (repeatable), e.g. scst.candidates=\"beam\"")
    parser.add_argument("--batch-images", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 1 warm-up)")
    parser.add_argument("--images", type=int, default=5000, help="synthetic training images")
    parser.add_argument("--vocab", type=int, default=2000, help="synthetic vocabulary size")
    parser.add_argument("--patches", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128, help="visual token width")
    parser.add_argument("--eos-scale", type=float, default=10.0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = measure_scst_step(load_config(args.config, args.set), resolve_device(args.device),
                               args.batch_images, args.steps, args.images, args.vocab,
                               args.patches, args.dim, args.eos_scale, args.seed)
    print_report(report)
    print(f"reward share of an SCST step: {100 * report['reward_share']:.1f}% "
          f"({report['reward_ms_per_step']} of {report['step_ms_per_step']} ms); with "
          f"pycocoevalcap's CiderScorer on the same candidates "
          f"{report['pycoco_reward_ms_per_step']} ms, a share of "
          f"{100 * report['pycoco_reward_share']:.1f}%")


if __name__ == "__main__":
    main()
