"""Which objects a run hallucinates, and what they usually accompany in the training captions.

`evaluate score` writes `eval/<split>/hallucination.json` whenever it computes CHAIR, from the
same per-caption CHAIR results (`evaluate.chair.image_chair`) and the same vocabulary:

    categories   every category of the CHAIR vocabulary (the original's 80 COCO categories, or
                 a dataset's own), most hallucinated first: `mentions` (every mention, repeats
                 included, as CHAIRi counts them), `hallucinated` (mentions of it in captions
                 whose image does not show it), `rate` = hallucinated / mentions (null when
                 never mentioned), `images` (captions mentioning it) and `hallucinated_images`
                 (captions hallucinating it). Summed over categories, mentions and hallucinated
                 are CHAIRi's denominator and numerator.
    hallucinated the `top` most hallucinated categories (hallucinated > 0), each with
                 `present_when_hallucinated`: the ground-truth objects of the image at each of
                 its hallucinated mentions, counted per mention (`mentions`, `share` of its
                 hallucinated mentions), most frequent first; and `training_cooccurring`: the
                 categories it co-occurs with in most training images.
    training     the training split (Karpathy `train` + `restval`): its reference captions go
                 through the same CHAIR mention extraction; per image, the set of categories its
                 captions mention. `training_images` of a pair = training images mentioning
                 both; `p_given` = P(category mentioned | object mentioned) over training
                 images = images with both / images with the object (null when no training
                 image mentions the object).

A high `p_given` for an object that was present when the category was hallucinated is the
language prior of Rohrbach et al. 2018 ("Object Hallucination in Image Captioning"): the model
names what usually accompanies what it sees. Nothing is cached: one pass over the training
captions (the demo's 12,000 in about 2 s; COCO's 566,000 would take about 1.5 min at that
rate).

`category_rate_changes` lists, for `evaluate compare`, the categories whose rate moved most
between runs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluate.chair import ImageChair
from evaluate.chair_vocabulary import ObjectWords
from shared.atomic_files import write_json_atomic

__all__ = ["HALLUCINATION_FILE", "CategoryCount", "Cooccurrence", "category_counts",
           "category_rate_changes", "hallucination_analysis", "load_hallucination",
           "rate_change_section", "training_cooccurrence", "write_hallucination"]

HALLUCINATION_FILE = "hallucination.json"
DEFAULT_TOP = 10
"""Categories given co-occurrence details (the most hallucinated)."""
DEFAULT_TOP_K = 5
"""Co-occurring objects listed per category."""
DEFAULT_MIN_MENTIONS = 5
"""`category_rate_changes` ignores categories with fewer mentions in either run."""

DEFINITIONS = {
    "mentions": "mentions of the category in the captions, repeats included (CHAIRi's count)",
    "hallucinated": "those mentions whose image's ground truth lacks the category",
    "rate": "hallucinated / mentions (null: never mentioned)",
    "images": "captions mentioning the category",
    "hallucinated_images": "captions hallucinating the category",
    "present_when_hallucinated": "ground-truth objects of the image at each hallucinated "
                                 "mention; mentions = such hallucinated mentions, share = "
                                 "mentions / the category's hallucinated mentions",
    "training_images": "training images whose reference captions mention both (or, for a "
                       "category, it)",
    "p_given": "P(category mentioned | object mentioned) over the training images' reference "
               "captions",
}


@dataclass(frozen=True)
class CategoryCount:
    """One category's mentions and hallucinations over a split's captions."""

    category: str
    mentions: int
    hallucinated: int
    images: int
    hallucinated_images: int

    @property
    def rate(self) -> float | None:
        """Hallucinated / mentions; None when never mentioned."""
        return self.hallucinated / self.mentions if self.mentions else None

    def to_json(self) -> dict[str, Any]:
        """Plain dict with the rate."""
        return {"category": self.category, "mentions": self.mentions,
                "hallucinated": self.hallucinated, "rate": self.rate, "images": self.images,
                "hallucinated_images": self.hallucinated_images}


def category_counts(images: Iterable[ImageChair], categories: Sequence[str]
                    ) -> list[CategoryCount]:
    """Every category of `categories` (plus any other one mentioned), most hallucinated first;
    ties: higher rate, more mentions, then vocabulary order."""
    mentions: Counter[str] = Counter()
    hallucinated: Counter[str] = Counter()
    images_with: Counter[str] = Counter()
    hallucinated_with: Counter[str] = Counter()
    for result in images:
        mentions.update(result.mentioned)
        hallucinated.update(result.hallucinated)
        images_with.update(set(result.mentioned))
        hallucinated_with.update(set(result.hallucinated))
    order = {c: i for i, c in enumerate(dict.fromkeys([*categories, *sorted(mentions)]))}
    counts = [CategoryCount(c, mentions[c], hallucinated[c], images_with[c], hallucinated_with[c])
              for c in order]
    return sorted(counts, key=lambda c: (-c.hallucinated, -(c.rate if c.rate is not None
                                                            else -1.0),
                                         -c.mentions, order[c.category]))


@dataclass
class Cooccurrence:
    """Per category, the training images whose captions mention it, and per pair of distinct
    categories, those mentioning both."""

    images: int
    captions: int
    counts: Counter[str]
    pairs: Counter[tuple[str, str]]

    def p_given(self, category: str, given: str) -> float | None:
        """P(`category` mentioned | `given` mentioned) over the training images (None when no
        image mentions `given`)."""
        n = self.counts[given]
        return self.pairs[category, given] / n if n else None

    def top_with(self, category: str, k: int) -> list[dict[str, Any]]:
        """The `k` categories mentioned in the most training images together with `category`
        (ties: higher p_given, then name), with those images and p_given."""
        partners = [(b, n) for (a, b), n in self.pairs.items() if a == category and n > 0]
        partners.sort(key=lambda p: (-p[1], -(self.p_given(category, p[0]) or 0.0), p[0]))
        return [{"category": b, "training_images": n, "p_given": self.p_given(category, b)}
                for b, n in partners[:k]]


def training_cooccurrence(captions: Iterable[Sequence[str]], vocab: ObjectWords) -> Cooccurrence:
    """Co-occurrence of CHAIR categories over training images, one item of `captions` per image
    (its reference captions); a category is in an image when any of its captions mentions it,
    by `vocab.mentions` (the CHAIR extraction)."""
    counts: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    images = n_captions = 0
    for image_captions in captions:
        images += 1
        n_captions += len(image_captions)
        present = sorted({m.category for c in image_captions for m in vocab.mentions(c)})
        counts.update(present)
        pairs.update((a, b) for a in present for b in present if a != b)
    return Cooccurrence(images, n_captions, counts, pairs)


def present_when_hallucinated(images: Iterable[ImageChair], category: str) -> Counter[str]:
    """Ground-truth object -> hallucinated mentions of `category` in captions of images that
    show it (each hallucinated mention counts once per object of its image)."""
    present: Counter[str] = Counter()
    for result in images:
        n = result.hallucinated.count(category)
        if n:
            present.update({obj: n for obj in result.ground_truth})
    return present


def hallucination_analysis(images: Mapping[int, ImageChair], vocab: ObjectWords,
                           training: Cooccurrence, top: int = DEFAULT_TOP,
                           top_k: int = DEFAULT_TOP_K) -> dict[str, Any]:
    """The content of `hallucination.json` (layout in the module docstring)."""
    counts = category_counts(images.values(), vocab.categories)
    details = []
    for count in [c for c in counts if c.hallucinated][:top]:
        a = count.category
        present = present_when_hallucinated(images.values(), a)
        ranked = sorted(present.items(),
                        key=lambda p: (-p[1], -(training.p_given(a, p[0]) or 0.0), p[0]))
        details.append({
            **count.to_json(), "training_images": training.counts[a],
            "training_share": training.counts[a] / training.images if training.images else None,
            "present_when_hallucinated": [
                {"category": b, "mentions": n, "share": n / count.hallucinated,
                 "training_images": training.pairs[a, b], "p_given": training.p_given(a, b)}
                for b, n in ranked[:top_k]],
            "training_cooccurring": training.top_with(a, top_k)})
    return {"vocabulary": vocab.name, "images": len(images),
            "mentions": sum(c.mentions for c in counts),
            "hallucinated_mentions": sum(c.hallucinated for c in counts),
            "top": top, "top_k": top_k,
            "training": {"split": "train+restval", "images": training.images,
                         "captions": training.captions},
            "definitions": DEFINITIONS,
            "categories": [c.to_json() for c in counts], "hallucinated": details}


def write_hallucination(folder: Path, analysis: dict[str, Any] | None) -> None:
    """Write `folder/hallucination.json`, or remove a stale one when `analysis` is None (CHAIR
    not computed)."""
    path = Path(folder) / HALLUCINATION_FILE
    if analysis is None:
        path.unlink(missing_ok=True)
    else:
        write_json_atomic(path, analysis)


def hallucination_path(run: str | Path) -> Path:
    """The `hallucination.json` of an eval folder, of the folder of a file in it (its
    `metrics.json`), or the file itself."""
    path = Path(run)
    if path.is_dir():
        return path / HALLUCINATION_FILE
    return path if path.name == HALLUCINATION_FILE else path.parent / HALLUCINATION_FILE


def load_hallucination(path: Path) -> dict[str, Any]:
    """A `hallucination.json` (FileNotFoundError when absent; one-line ValueError naming the
    file when it is not one)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        for entry in [*data["categories"], *data["hallucinated"]]:
            str(entry["category"]), int(entry["mentions"]), int(entry["hallucinated"])
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            ValueError) as err:
        raise ValueError(f"{path}: not a hallucination analysis ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); re-run "
                         "`python -m evaluate score --force`") from None
    return data


RunFiles = str | Path | Sequence[str | Path]
"""A run for `category_rate_changes`: an eval folder, its `metrics.json` or its
`hallucination.json`; or several of them (one model's seeds), whose counts are pooled."""


def _rate_text(counts: tuple[int, int]) -> str:
    """'50.0% (6/12)' of (mentions, hallucinated)."""
    mentions, hallucinated = counts
    return f"{100 * hallucinated / mentions:.1f}% ({hallucinated}/{mentions})"


def pooled_counts(files: RunFiles) -> tuple[str, dict[str, tuple[int, int]]] | str:
    """(vocabulary, category -> (mentions, hallucinated)) summed over the files of one run (its
    seeds), or why there are none (a line). ValueError for a malformed file."""
    paths = [files] if isinstance(files, (str, Path)) else list(files)
    vocabularies: set[str] = set()
    pooled: dict[str, tuple[int, int]] = {}
    for path in map(hallucination_path, paths):
        try:
            data = load_hallucination(path)
        except FileNotFoundError:
            return (f"no {HALLUCINATION_FILE} ({path}): scored without CHAIR or before it "
                    "existed")
        vocabularies.add(str(data.get("vocabulary")))
        for e in data["categories"]:
            mentions, hallucinated = pooled.get(e["category"], (0, 0))
            pooled[e["category"]] = (mentions + int(e["mentions"]),
                                     hallucinated + int(e["hallucinated"]))
    if len(vocabularies) != 1:
        return f"its runs use different CHAIR vocabularies ({', '.join(sorted(vocabularies))})"
    return vocabularies.pop(), pooled


def rate_change_section(runs: Sequence[tuple[str, RunFiles]], top: int = 5,
                        min_mentions: int = DEFAULT_MIN_MENTIONS
                        ) -> tuple[str, list[str]] | None:
    """(title, lines without list markers) of `category_rate_changes`; None for fewer than
    two runs."""
    if len(runs) < 2:
        return None
    base_label, base_files = runs[0]
    base = pooled_counts(base_files)
    title = (f"Hallucination rate by category, largest changes vs {base_label} (hallucinated "
             f"/ mentions, seeds pooled; categories with at least {min_mentions} mentions in "
             "both runs)")
    if isinstance(base, str):
        return title, [f"{base_label}: {base}"]
    vocabulary, base_counts = base
    lines = []
    for label, files in runs[1:]:
        found = pooled_counts(files)
        if isinstance(found, str):
            lines.append(f"{label}: {found}")
            continue
        if found[0] != vocabulary:
            lines.append(f"{label}: CHAIR vocabulary {found[0]!r}, not {vocabulary!r} as "
                         f"{base_label}: not comparable")
            continue
        changes = []
        for category, now in found[1].items():
            before = base_counts.get(category)
            if before is None or min(before[0], now[0]) < min_mentions:
                continue
            changes.append((now[1] / now[0] - before[1] / before[0], category, now, before))
        changes.sort(key=lambda c: (-abs(c[0]), c[1]))
        if not changes:
            lines.append(f"{label}: no category with at least {min_mentions} mentions in both "
                         "runs")
        lines += [f"{label}: {category} {_rate_text(now)} vs {_rate_text(before)}, "
                  f"{100 * delta:+.1f} points" for delta, category, now, before in changes[:top]]
    return title, lines


def category_rate_changes(runs: Sequence[tuple[str, RunFiles]], top: int = 5,
                          min_mentions: int = DEFAULT_MIN_MENTIONS) -> list[str]:
    """Markdown lines: a bold title, then per run after the first (the baseline) the `top`
    categories whose hallucination rate (hallucinated / mentions) differs most from the
    baseline's, with both rates and counts; categories with fewer than `min_mentions` mentions
    in either run are ignored. A run is (label, eval folder, its `metrics.json` or its
    `hallucination.json`, or a list of them: one model's seeds, counts summed). A run without
    the file (scored without CHAIR, or by older code) or with another CHAIR vocabulary than the
    baseline gets a line saying so; [] for fewer than two runs."""
    section = rate_change_section(runs, top, min_mentions)
    if section is None:
        return []
    title, lines = section
    return [f"**{title}**", *(f"- {line}" for line in lines)]
