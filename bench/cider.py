"""Benchmark: `shared.cider_reward.CiderDReward` versus pycocoevalcap CIDEr-D, same batches.

A COCO-like synthetic training set (default 5,000 images x 5 references, 8-15 words, from a
~2,000-word Zipf vocabulary through caption templates; seeded) gives the document frequencies.
SCST-like batches (default 20 batches of 50 training images x 5 sampled candidates) are scored
by three callables, each timed on the same batches by `time_reward`:

* ours: `CiderDReward` built from the training references (training df, ref_len = log N);
* pycocoevalcap, training df: its `CiderScorer` with `compute_doc_freq` replaced by the training
  df and `ref_len` pinned to log N, i.e. the same numbers as ours (max |difference| checked);
* pycocoevalcap, plain: `Cider().compute_score` (df from the batch itself: other numbers, the
  usual speed reference).

    .venv/bin/python -m bench.cider [--images 5000] [--batches 20] [--batch-images 50]
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer

from bench.common import make_parser, print_report, timed
from shared.cider_reward import CiderDReward

Batch = tuple[list[int], list[list[str]]]
RewardFn = Callable[[Sequence[int], Sequence[list[str]]], np.ndarray]

_SEED_WORDS = {
    "noun": "man woman dog cat child person bus train horse bird plate food table street car "
            "bench field beach water kitchen room pizza giraffe elephant boy girl tree grass "
            "building sign road truck bike motorcycle umbrella sky snow skis surfboard wave "
            "frisbee ball bed couch window laptop phone clock toilet sink bear zebra sheep cow "
            "boat plane airport bowl sandwich cake banana donut vase flowers tennis racket",
    "adj": "small large white black red young old wooden busy blue green yellow brown tall "
           "little big empty crowded open sunny snowy grassy dirty clean colorful several",
    "verb": "sitting standing riding walking eating holding playing parked flying lying "
            "looking carrying wearing waiting driving cutting watching talking crossing jumping",
    "prep": "on in next to near at with under behind by of across down along beside inside",
}
_SYLLABLES = ["ba", "ko", "ri", "tel", "man", "so", "lu", "ver", "din", "ga", "pe", "mo", "nar",
              "chi", "sta", "ble", "wo", "ten", "ly", "ru"]


def _category_vocab(rng: np.random.Generator, seed_words: list[str], size: int) -> list[str]:
    """Real seed words first (most frequent), then made-up words to reach `size`."""
    words = list(dict.fromkeys(seed_words))
    seen = set(words)
    misses = 0
    while len(words) < size:
        w = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 5))))
        if misses > 100:  # syllable combinations running out: number them
            w += str(len(words))
        if w in seen:
            misses += 1
            continue
        seen.add(w)
        words.append(w)
    return words[:size]


class CaptionGenerator:
    """COCO-like captions about latent scenes, words drawn Zipf-style per category."""

    TEMPLATES = [
        "a {adj} {noun} {verb} {prep} a {noun2}",
        "a {noun} {verb} {prep} the {adj} {noun2} {prep2} a {noun3}",
        "the {adj} {noun} is {verb} {prep} a {adj2} {noun2}",
        "two {noun} {verb} {prep} the {noun2} and a {noun3}",
        "there is a {adj} {noun} {verb} {prep} the {noun2} {prep2} the {noun3}",
        "an image of a {noun} {verb} {prep} a {adj} {noun2} with a {noun3}",
        "a {noun} and a {noun3} {verb} {prep} a {adj} {adj2} {noun2}",
    ]

    def __init__(self, vocab_size: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        shares = {"noun": 0.55, "adj": 0.2, "verb": 0.2, "prep": 0.05}
        self.words = {c: _category_vocab(rng, _SEED_WORDS[c].split(), max(8, int(vocab_size * s)))
                      for c, s in shares.items()}
        self.cdf = {}
        for c, ws in self.words.items():
            weights = np.cumsum(1.0 / np.arange(1, len(ws) + 1) ** 1.1)
            self.cdf[c] = weights / weights[-1]

    def draw(self, rng: np.random.Generator, category: str) -> str:
        """One word of `category`, P(rank r) ~ 1 / r^1.1."""
        ws, cdf = self.words[category], self.cdf[category]
        return ws[min(int(np.searchsorted(cdf, rng.random(), side="right")), len(ws) - 1)]

    def scene(self, rng: np.random.Generator) -> dict[str, str]:
        return {"noun": self.draw(rng, "noun"), "noun2": self.draw(rng, "noun"),
                "noun3": self.draw(rng, "noun"), "adj": self.draw(rng, "adj"),
                "adj2": self.draw(rng, "adj"), "verb": self.draw(rng, "verb"),
                "prep": self.draw(rng, "prep"), "prep2": self.draw(rng, "prep")}

    def caption(self, rng: np.random.Generator, scene: dict[str, str], drift: float = 0.25,
                ) -> list[str]:
        """8-15 words about `scene`, each slot replaced by a fresh Zipf draw with prob `drift`."""
        slots = {k: (self.draw(rng, k.rstrip("23")) if rng.random() < drift else v)
                 for k, v in scene.items()}
        words = self.TEMPLATES[int(rng.integers(len(self.TEMPLATES)))].format(**slots).split()
        while len(words) < 8:
            words += [self.draw(rng, "prep"), "the", self.draw(rng, "noun")]
        return words[:15]


References = dict[int, list[list[str]]]


def synthetic_training_set(n_images: int, refs_per_image: int, vocab_size: int, seed: int,
                           ) -> tuple[References, dict[int, dict], CaptionGenerator]:
    """image id -> references, image id -> latent scene, and the generator."""
    gen = CaptionGenerator(vocab_size, seed)
    rng = np.random.default_rng(seed + 1)
    refs, scenes = {}, {}
    for i in range(n_images):
        scenes[i] = gen.scene(rng)
        refs[i] = [gen.caption(rng, scenes[i]) for _ in range(refs_per_image)]
    return refs, scenes, gen


def scst_batches(gen: CaptionGenerator, scenes: dict[int, dict], n_batches: int,
                 batch_images: int, per_image: int, seed: int) -> list[Batch]:
    """Batches of (image ids, sampled candidates), `per_image` candidates per training image."""
    rng = np.random.default_rng(seed)
    ids_all = sorted(scenes)
    batches = []
    for _ in range(n_batches):
        images = rng.choice(ids_all, size=batch_images, replace=False).tolist()
        ids = [i for i in images for _ in range(per_image)]
        batches.append((ids, [gen.caption(rng, scenes[i], drift=0.35) for i in ids]))
    return batches


def time_reward(reward: RewardFn, batches: Sequence[Batch], repeats: int = 1,
                ) -> tuple[float, list[np.ndarray]]:
    """Best-of-`repeats` wall seconds to score all `batches` with `reward`, and its scores."""
    best, scores = float("inf"), []
    for _ in range(max(repeats, 1)):
        scores, seconds = timed(lambda: [np.asarray(reward(ids, cands), dtype=np.float64)
                                         for ids, cands in batches])
        best = min(best, seconds)
    return best, scores


class FixedDfCiderScorer(CiderScorer):
    """pycocoevalcap's CiderScorer with a given df (shared, not copied) and pinned ref_len.

    `compute_cider` assigns `self.ref_len = log(len(self.crefs))`; the property ignores that.
    Lookups of unseen n-grams add zero entries to the shared defaultdict, which changes nothing.
    """

    def __init__(self, document_frequency: defaultdict, ref_len: float) -> None:
        self._fixed_df, self._fixed_ref_len = document_frequency, ref_len
        super().__init__(n=4, sigma=6.0)

    @property
    def ref_len(self) -> float:
        return self._fixed_ref_len

    @ref_len.setter
    def ref_len(self, value: float | None) -> None:
        pass

    def compute_doc_freq(self) -> None:
        self.document_frequency = self._fixed_df


def pycoco_training_df(references: dict[int, list[list[str]]]) -> tuple[defaultdict, float]:
    """df and log(N) over the training references, by pycocoevalcap's own `compute_doc_freq`."""
    scorer = CiderScorer()
    for refs in references.values():
        scorer += (None, [" ".join(r) for r in refs])
    scorer.compute_doc_freq()
    return scorer.document_frequency, float(np.log(float(len(scorer.crefs))))


def pycoco_fixed_df_reward(references: dict[int, list[list[str]]], df: defaultdict,
                           ref_len: float) -> RewardFn:
    """Per-candidate CIDEr-D by pycocoevalcap's code with the training df (= ours)."""
    def reward(ids: Sequence[int], cands: Sequence[list[str]]) -> np.ndarray:
        scorer = FixedDfCiderScorer(df, ref_len)
        for image_id, cand in zip(ids, cands):
            scorer += (" ".join(cand), [" ".join(r) for r in references[image_id]])
        scorer.compute_doc_freq()
        return np.array(scorer.compute_cider())
    return reward


def pycoco_plain_reward(references: dict[int, list[list[str]]]) -> RewardFn:
    """Per-candidate scores of plain `Cider().compute_score` (df from the batch itself)."""
    def reward(ids: Sequence[int], cands: Sequence[list[str]]) -> np.ndarray:
        gts = {k: [" ".join(r) for r in references[i]] for k, i in enumerate(ids)}
        res = {k: [" ".join(c)] for k, c in enumerate(cands)}
        return Cider().compute_score(gts, res)[1]
    return reward


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--images", type=int, default=5000, help="training images")
    parser.add_argument("--refs", type=int, default=5, help="references per image")
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-images", type=int, default=50)
    parser.add_argument("--per-image", type=int, default=5, help="candidates per image")
    parser.add_argument("--repeats", type=int, default=3, help="best of, for ours")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    refs, scenes, gen = synthetic_training_set(args.images, args.refs, args.vocab, args.seed)
    batches = scst_batches(gen, scenes, args.batches, args.batch_images, args.per_image,
                           args.seed + 2)
    n_rewards = sum(len(ids) for ids, _ in batches)

    reward, build_s = timed(lambda: CiderDReward.from_references(refs))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cider_df.npz"
        _, save_s = timed(lambda: reward.save(cache))
        reward, load_s = timed(lambda: CiderDReward.load(cache))
        cache_mb = cache.stat().st_size / 2**20
    (df, ref_len), pycoco_df_s = timed(lambda: pycoco_training_df(refs))

    ours_s, ours = time_reward(reward, batches, args.repeats)
    fixed_s, fixed = time_reward(pycoco_fixed_df_reward(refs, df, ref_len), batches)
    plain_s, _ = time_reward(pycoco_plain_reward(refs), batches)
    max_diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, fixed))
    vocab_used = len({w for rs in refs.values() for r in rs for w in r})
    print_report({
        "training_images": args.images, "refs_per_image": args.refs,
        "reference_vocab": vocab_used, "ngrams": int(len(reward.df)),
        "batches": args.batches, "candidates_per_batch": args.batch_images * args.per_image,
        "rewards": n_rewards, "cpus": os.cpu_count(),
        "build_seconds": round(build_s, 2), "pycoco_df_seconds": round(pycoco_df_s, 2),
        "cache_mb": round(cache_mb, 1), "save_seconds": round(save_s, 3),
        "load_seconds": round(load_s, 3),
        "ours_seconds": round(ours_s, 4), "pycoco_training_df_seconds": round(fixed_s, 3),
        "pycoco_plain_seconds": round(plain_s, 3),
        "ours_rewards_per_s": round(n_rewards / ours_s),
        "pycoco_training_df_rewards_per_s": round(n_rewards / fixed_s),
        "pycoco_plain_rewards_per_s": round(n_rewards / plain_s),
        "speedup_vs_pycoco_training_df": round(fixed_s / ours_s, 1),
        "speedup_vs_pycoco_plain": round(plain_s / ours_s, 1),
        "ms_per_batch_ours": round(1000 * ours_s / args.batches, 2),
        "max_abs_diff_vs_pycoco_training_df": max_diff,
        "mean_reward": round(float(np.mean(np.concatenate(ours))), 4)})
    if not max_diff < 1e-6:
        raise SystemExit(f"mismatch with pycocoevalcap: max |difference| {max_diff:.3g}")


if __name__ == "__main__":
    main()
