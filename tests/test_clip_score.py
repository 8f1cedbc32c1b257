"""CLIP-S / RefCLIP-S as Hessel et al.'s `clipscore.py` computes them (`evaluate.clip_score`).

The reference values below follow that code line by line: unit rows
(`x / sqrt(sum(x**2))`), CLIP-S = 2.5 * clip(image . candidate, 0), the text side = the
maximum of candidate . reference over the candidate's references (not clipped), RefCLIP-S =
2ab / (a + b); texts prefixed with "A photo depicts "; ViT-B/32 on the image files.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import evaluate.clip_score as clip_score
from evaluate.clip_score import (NAMES, PREFIX, encode_texts, reference_clip,
                                 scores_from_embeddings)
from evaluate.score import clip_score_metrics
from evaluate.transfer import score_transfer
from shared.clip_model import create_clip
from shared.config import load_config
from shared.karpathy import load_karpathy, split_records
from shared.stages import eval_dir, eval_stage
from tests.conftest import DEMO_CONFIG


def _reference_code(images: np.ndarray, candidates: np.ndarray, refs: np.ndarray,
                    owners: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """clipscore.py's get_clip_score + get_refonlyclipscore + its harmonic mean."""
    images = images / np.sqrt(np.sum(images ** 2, axis=1, keepdims=True))
    candidates = candidates / np.sqrt(np.sum(candidates ** 2, axis=1, keepdims=True))
    per_image_text = 2.5 * np.clip(np.sum(images * candidates, axis=1), 0, None)
    refs = refs / np.sqrt(np.sum(refs ** 2, axis=1, keepdims=True))
    per_text_text = np.array([np.max(c.dot(refs[np.array(owners) == i].T))
                              for i, c in enumerate(candidates)])
    return per_image_text, 2 * per_image_text * per_text_text / (per_image_text + per_text_text)


def test_hand_computed_cases_follow_the_reference_code() -> None:
    images = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    candidates = np.array([[1.0, 1.0], [1.0, 0.2], [-1.0, 0.1]])
    refs = np.array([[0.0, 1.0], [-1.0, 0.0], [-1.0, -0.5], [1.0, 0.0]])
    owners = np.array([0, 0, 1, 2])
    scores = scores_from_embeddings(images, candidates, refs, owners)
    # 0: cos 1/sqrt(2); best reference cos 1/sqrt(2) (the other is -1/sqrt(2))
    clip_0 = 2.5 / math.sqrt(2)
    assert scores.clip_s[0] == pytest.approx(clip_0)
    assert scores.ref_clip_s[0] == pytest.approx(
        2 * clip_0 * (1 / math.sqrt(2)) / (clip_0 + 1 / math.sqrt(2)))
    # 1: its only reference points away: the reference code does not clip the text side at 0,
    # so RefCLIP-S goes negative (the paper's formula would give 0)
    cos_1 = 1 / math.hypot(1, 0.2)
    text_1 = (-1 - 0.1) / (math.hypot(1, 0.2) * math.hypot(1, 0.5))
    assert scores.clip_s[1] == pytest.approx(2.5 * cos_1)
    assert scores.ref_clip_s[1] == pytest.approx(
        2 * 2.5 * cos_1 * text_1 / (2.5 * cos_1 + text_1))
    assert scores.ref_clip_s[1] < 0
    # 2: the caption points away from the image: CLIP-S 0, so RefCLIP-S 0
    assert scores.clip_s[2] == 0 and scores.ref_clip_s[2] == 0
    assert scores.corpus() == {"CLIP-S": pytest.approx(scores.clip_s.mean()),
                               "RefCLIP-S": pytest.approx(scores.ref_clip_s.mean())}


def test_random_embeddings_equal_the_reference_code() -> None:
    rng = np.random.default_rng(3)
    n, width = 40, 16
    owners = np.repeat(np.arange(n), rng.integers(1, 6, size=n))
    images, candidates = rng.normal(size=(n, width)), rng.normal(size=(n, width))
    refs = rng.normal(size=(len(owners), width))
    clip_s, ref_clip_s = _reference_code(images, candidates, refs, owners.tolist())
    scores = scores_from_embeddings(images, candidates, refs, owners)
    np.testing.assert_allclose(scores.clip_s, clip_s, rtol=1e-12)
    np.testing.assert_allclose(scores.ref_clip_s, ref_clip_s, rtol=1e-9, atol=1e-12)
    assert (ref_clip_s < 0).any()  # the unclipped text side matters here


def test_a_candidate_without_references_is_refused() -> None:
    with pytest.raises(ValueError, match="candidate 1 has no reference"):
        scores_from_embeddings(np.ones((2, 3)), np.ones((2, 3)), np.ones((1, 3)), np.array([0]))


def test_texts_are_prefixed_and_long_ones_truncated() -> None:
    bundle = create_clip("demo-tiny-clip", "random")
    device = torch.device("cpu")
    got = encode_texts(bundle, ["a red star", "star " * 200], device)
    with torch.no_grad():
        want = F.normalize(bundle.model.encode_text(
            bundle.tokenizer([PREFIX + "a red star"])).float(), dim=-1)
    torch.testing.assert_close(got[:1], want)
    assert PREFIX == "A photo depicts " and got.shape[0] == 2 and torch.isfinite(got).all()


def test_scored_run_has_the_reference_clip_s(scored_run) -> None:
    """The demo run scored with `eval.clipscore` (the reference ViT-B-32, random weights here:
    the OpenAI ones are a download): CLIP-S / RefCLIP-S per image and their means."""
    config, _, _ = scored_run
    per_image = json.loads((eval_dir(config) / "per_image.json").read_text())
    metrics = json.loads((eval_dir(config) / "metrics.json").read_text())
    assert config.eval.clipscore_clip == "reference"
    assert reference_clip("random", torch.device("cpu")).name == "ViT-B-32"
    assert any("Hessel et al." in note for note in metrics["notes"])
    assert metrics["metrics"]["CLIP-S"] == pytest.approx(
        float(np.mean([e["scores"]["CLIP-S"] for e in per_image])), abs=1e-6)
    assert "CLIP-S_run" not in metrics["metrics"]


def test_reference_clip_s_is_computed_on_the_image_files(scored_run, monkeypatch) -> None:
    """What the reference code computes, on the scored run's captions: every image file
    decoded whole and preprocessed by the model, prefixed texts, the formulas above. The
    demo's trained tiny CLIP stands in for ViT-B/32 (the same code path) so that the scores
    are not degenerate."""
    config, sets, _ = scored_run
    monkeypatch.setattr(clip_score, "REFERENCE_MODEL", config.clip.model)
    config = load_config(DEMO_CONFIG, [*sets, f"eval.clipscore_pretrained="
                                              f"{json.dumps(config.clip.pretrained)}"])
    entries = json.loads((eval_dir(config) / "per_image.json").read_text())
    ids = [e["image_id"] for e in entries]
    per_image = {i: {"scores": {}} for i in ids}
    corpus = clip_score_metrics(config, ids, {e["image_id"]: e["file"] for e in entries},
                                {e["image_id"]: e["caption"] for e in entries},
                                {e["image_id"]: e["references"] for e in entries}, per_image)
    bundle = create_clip(config.clip.model, config.clip.pretrained)
    with torch.no_grad():
        images = torch.stack([bundle.preprocess(_full_decode(e["file"])) for e in entries])
        image_embeds = bundle.model.encode_image(images).numpy()
        candidates = bundle.model.encode_text(bundle.tokenizer(
            [PREFIX + e["caption"] for e in entries])).numpy()
        refs = bundle.model.encode_text(bundle.tokenizer(
            [PREFIX + r for e in entries for r in e["references"]])).numpy()
    owners = [k for k, e in enumerate(entries) for _ in e["references"]]
    clip_s, ref_clip_s = _reference_code(image_embeds, candidates, refs, owners)
    assert clip_s.min() < clip_s.max() and (clip_s > 0).any()  # not a degenerate case
    np.testing.assert_allclose([per_image[i]["scores"]["CLIP-S"] for i in ids], clip_s,
                               atol=1e-5)
    np.testing.assert_allclose([per_image[i]["scores"]["RefCLIP-S"] for i in ids], ref_clip_s,
                               atol=1e-5)
    assert corpus == {"CLIP-S": pytest.approx(float(clip_s.mean()), abs=1e-6),
                      "RefCLIP-S": pytest.approx(float(ref_clip_s.mean()), abs=1e-6)}


def _full_decode(path: str):  # noqa: ANN202 - a PIL image
    from PIL import Image
    with Image.open(path) as image:
        return image.convert("RGB")


def test_run_clip_is_opt_in_under_its_own_names(scored_run) -> None:
    """`eval.clipscore_clip = "run"`: the run's CLIP on its cached embeddings, reported as
    CLIP-S_run / RefCLIP-S_run; the score stage then reads the CLIP cache."""
    _, sets, _ = scored_run
    config = load_config(DEMO_CONFIG, [*sets, 'eval.clipscore_clip="run"'])
    assert "extract.clip" in [s.name for s in eval_stage(config).upstream]
    records = split_records(load_karpathy(config.data.karpathy_json, config.data.image_root),
                            "test")[:4]
    per_image = {r.image_id: {"scores": {}} for r in records}
    corpus = clip_score_metrics(config, [r.image_id for r in records],
                                {r.image_id: r.path for r in records},
                                {r.image_id: "a red star" for r in records},
                                {r.image_id: list(r.captions) for r in records}, per_image)
    assert set(corpus) == set(NAMES["run"]) == {"CLIP-S_run", "RefCLIP-S_run"}
    assert all(set(entry["scores"]) == set(NAMES["run"]) for entry in per_image.values())
    assert 0 <= corpus["CLIP-S_run"] <= 2.5


def test_transfer_refuses_the_run_clip(demo_run) -> None:
    _, sets = demo_run
    config = load_config(DEMO_CONFIG, [*sets, "eval.clipscore=true",
                                       'eval.clipscore_clip="run"'])
    with pytest.raises(ValueError, match='eval.clipscore_clip = "run"'):
        score_transfer(config, "runs/nowhere")
