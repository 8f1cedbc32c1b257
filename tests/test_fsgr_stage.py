"""`extract concepts|fit|encode` on a small demo set with a trained tiny CLIP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import extract.fsgr_encode as fsgr_encode
import shared.training_loop as training_loop
from extract.concepts import ConceptCodebook
from extract.fsgr_encode import FsgrMeta, check_compatible, encode_fsgr
from extract.fsgr_fit import clip_logit_scale, fit_fsgr
from shared.models.factory import build_encoder, load_fsgr
from shared.chunked_stage import ChunkedOutput
from shared.clip_model import create_clip
from shared.config import load_config
from shared.datasets.demo_captions import SYNONYMS
from shared.datasets.demo_scenes import CATEGORIES
from shared.feature_store import FeatureStore
from shared.karpathy import load_karpathy, split_records
from shared.manifest import current_state, decide, read_manifest
from shared.stages import (clip_stage, codebook_usage_path, concepts_stage, encode_stage,
                           fit_stage)
from tests.conftest import DEMO_CONFIG
from tests.demo_masks import object_masks, patch_categories


def read_fsgr(path: Path) -> dict[str, np.ndarray]:
    with FeatureStore.open(path) as store:
        return {n: store.read(n) for n in ("features", "codebook_index", "topk_ids",
                                           "image_ids", "valid")}


def test_fsgr_store_layout(demo_run) -> None:
    config, _ = demo_run
    arrays = read_fsgr(encode_stage(config).output)
    n = len(arrays["image_ids"])
    grid = tuple(read_manifest(encode_stage(config).output)["summary"]["grid"])
    assert arrays["features"].shape == (n, grid[0] * grid[1], config.fsgr.d_model)
    assert arrays["features"].dtype == np.float16
    assert arrays["codebook_index"].shape == (n, grid[0] * grid[1])
    assert arrays["topk_ids"].shape == (n, config.fsgr.top_k)
    assert np.isfinite(arrays["features"].astype(np.float32)).all()
    for index, topk in zip(arrays["codebook_index"], arrays["topk_ids"]):
        assert np.isin(index, topk).all()
    fit_log = [json.loads(line) for line in
               (fit_stage(config).output.parent / "fit_log.jsonl").read_text().splitlines()]
    assert fit_log[-1]["train_xe"] < fit_log[0]["train_xe"]


def test_codebook_index_names_the_shape_or_colour(demo_run) -> None:
    """Patches covering an object point at its shape or colour far above chance."""
    config, _ = demo_run
    words = ConceptCodebook.load(concepts_stage(config).output).words
    arrays = read_fsgr(encode_stage(config).output)
    grid = tuple(read_manifest(encode_stage(config).output)["summary"]["grid"])
    instances = json.loads(Path(config.data.instances_json[0]).read_text())
    colour_of = {a["id"]: a["attributes"]["color"] for a in instances["annotations"]}
    objects_of: dict[int, list[dict]] = {}
    for ann in instances["annotations"]:
        objects_of.setdefault(ann["image_id"], []).append(ann)
    hits = chance_vocab = chance_topk = total = 0
    for image_id, index, topk in zip(arrays["image_ids"], arrays["codebook_index"],
                                     arrays["topk_ids"]):
        cats, cover = patch_categories(object_masks(instances, int(image_id)), grid)
        cats, cover = cats.reshape(-1), cover.reshape(-1)
        for patch in np.flatnonzero(cover > 0.5):
            ann = next(a for a in objects_of[int(image_id)] if a["category_id"] == cats[patch])
            names = {*SYNONYMS[CATEGORIES[cats[patch] - 1]], colour_of[ann["id"]]}
            good = np.array([w in names for w in words])
            hits += bool(good[index[patch]])
            chance_vocab += good.mean()
            chance_topk += good[topk].mean()
            total += 1
    assert total > 100
    rate, vocab_rate, topk_rate = hits / total, chance_vocab / total, chance_topk / total
    print(f"hit rate {rate:.3f}; chance over vocabulary {vocab_rate:.3f}, "
          f"over the image's top-k {topk_rate:.3f}")
    assert rate > 2.5 * vocab_rate
    assert rate > 1.2 * topk_rate


def test_second_run_skips(demo_run) -> None:
    config, _ = demo_run
    assert fit_fsgr(config, progress=False).lines == [
        f"extract fit: up to date ({fit_stage(config).output})"]
    assert encode_fsgr(config, progress=False).lines[0].startswith("extract encode: up to date")


def test_encode_resumes_after_a_crash(demo_run, tmp_path, monkeypatch) -> None:
    config, sets = demo_run
    reference = read_fsgr(encode_stage(config).output)
    config = load_config(DEMO_CONFIG, sets)
    crashed = {"writes": 0}
    original = ChunkedOutput.write_chunk

    def crash_after_two(self, chunk, values, failures):
        if crashed["writes"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        crashed["writes"] += 1
        original(self, chunk, values, failures)

    monkeypatch.setattr(fsgr_encode.ChunkedOutput, "write_chunk", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        encode_fsgr(config, force=True, progress=False)
    assert read_manifest(encode_stage(config).output) is None
    monkeypatch.setattr(fsgr_encode.ChunkedOutput, "write_chunk", original)
    lines = encode_fsgr(config, progress=False).lines
    assert "(2 chunks already done)" in lines[0]
    resumed = read_fsgr(encode_stage(config).output)
    for name, value in reference.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def test_mismatched_cache_is_refused(demo_run) -> None:
    config, sets = demo_run
    other_clip = load_config(DEMO_CONFIG, [*sets, 'clip.model="ViT-B-16"'])
    with pytest.raises(RuntimeError, match=r"clip\.(zarr|h5) is not usable.*clip\.model"):
        encode_fsgr(other_clip, progress=False)
    other_concepts = load_config(DEMO_CONFIG, [*sets, "fsgr.concept_min_count=3"])
    with pytest.raises(RuntimeError, match=r"concepts\.npz is not usable.*concept_min_count"):
        fit_fsgr(other_concepts, progress=False)
    meta = FsgrMeta("demo-tiny-clip", (8, 8), 128, 128, "abc", 40)
    attrs = {"model": "demo-tiny-clip", "grid": [8, 8]}
    check_compatible(meta, attrs, "abc", "clip.zarr")
    with pytest.raises(RuntimeError, match="written by CLIP 'ViT-L-14'"):
        check_compatible(meta, {**attrs, "model": "ViT-L-14"}, "abc", "clip.zarr")
    with pytest.raises(RuntimeError, match="16x16 patch grid .* fitted on 8x8"):
        check_compatible(meta, {**attrs, "grid": [16, 16]}, "abc", "clip.zarr")
    with pytest.raises(RuntimeError, match="concept vocabulary"):
        check_compatible(meta, attrs, "other", "clip.zarr")
    wider = load_config(DEMO_CONFIG, [*sets, "fsgr.d_model=64", "fsgr.d_ff=128"])
    with pytest.raises(RuntimeError, match=r"fsgr\.pt: the FSGR checkpoint does not fit \[fsgr\] "
                                           r"of this config \(.* is \[\d+(, \d+)*\] in the file "
                                           r"but \[64(, \d+)*\] for this config\)") as err:
        load_fsgr(wider, torch.device("cpu"))
    assert "\n" not in str(err.value)


def fit_log(config) -> list[dict]:
    path = fit_stage(config).output.parent / "fit_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_logit_scale_is_the_clip_models_and_frozen(demo_run) -> None:
    config, sets = demo_run
    clip = create_clip(config.clip.model, config.clip.pretrained).model
    expected = float(clip.logit_scale.detach().exp())
    with FeatureStore.open(clip_stage(config).output) as store:
        attrs = store.attrs
    assert clip_logit_scale(attrs) == pytest.approx(expected, rel=1e-6)
    encoder, _ = load_fsgr(config, torch.device("cpu"))
    q = encoder.quantizer
    assert q.scale.item() == pytest.approx(expected, rel=1e-6)
    assert not q.logit_scale.requires_grad
    assert "quantizer.logit_scale" not in dict(encoder.named_parameters())
    assert read_manifest(fit_stage(config).output)["summary"]["logit_scale"] == pytest.approx(
        expected, rel=1e-6)
    assert all(r["logit_scale"] == pytest.approx(expected, rel=1e-6) for r in fit_log(config))

    learn = load_config(DEMO_CONFIG, [*sets, "fsgr.learn_logit_scale=true"])
    assert current_state(fit_stage(learn), learn)["identity"] != \
        current_state(fit_stage(config), config)["identity"]
    assert "fsgr.learn_logit_scale: False -> True" in decide(fit_stage(learn), learn).reason
    meta = load_fsgr(config, torch.device("cpu"))[1]
    learnable = build_encoder(learn, meta, q.visual_proj, q.concept_embeddings,
                              clip_logit_scale(attrs))
    param = dict(learnable.named_parameters())["quantizer.logit_scale"]
    assert param.requires_grad and param.exp().item() == pytest.approx(expected, rel=1e-6)


def test_fit_logs_gumbel_agreement_and_codebook_usage(demo_run) -> None:
    """At CLIP's logit scale the straight-through Gumbel sample agrees with the argmax
    assignment well above chance (1/top_k), and the val usage is recorded per concept. The
    fixture's 240-image CLIP gives about 2x chance (0.21 at k = 10); the full demo 3.6x
    (36-37%, README)."""
    config, _ = demo_run
    log = fit_log(config)
    k = config.fsgr.top_k
    n_concepts = len(ConceptCodebook.load(concepts_stage(config).output).words)
    for record in log:
        print(f"epoch {record['epoch']}: Gumbel = argmax {record['gumbel_argmax_agreement']:.3f}"
              f" (chance {1 / k:.3f}), scale {record['logit_scale']:.2f}, codebook "
              f"{record['codebook_used']}/{record['codebook_size']} concepts, entropy "
              f"{record['codebook_entropy_bits']:.2f} bits")
        assert record["gumbel_argmax_agreement"] > 1.8 / k
        assert record["codebook_size"] == n_concepts
        assert 1 <= record["codebook_used"] <= n_concepts
        assert 0.0 <= record["codebook_entropy_bits"] <= np.log2(record["codebook_used"]) + 1e-9

    usage = json.loads(codebook_usage_path(config).read_text())
    manifest = read_manifest(fit_stage(config).output)
    assert usage["fit_identity"] == manifest["identity"]
    assert usage["epoch"] == manifest["summary"]["best_epoch"]
    counts = np.array(usage["counts"])
    best = log[usage["epoch"] - 1]
    n_val = len(split_records(load_karpathy(config.data.karpathy_json, config.data.image_root),
                              "val"))
    grid = tuple(read_manifest(encode_stage(config).output)["summary"]["grid"])
    assert counts.shape == (n_concepts,) and counts.sum() == n_val * grid[0] * grid[1]
    assert usage["codebook_patches"] == best["codebook_patches"] == counts.sum()
    assert usage["codebook_used"] == best["codebook_used"] == (counts > 0).sum()
    assert usage["codebook_entropy_bits"] == pytest.approx(best["codebook_entropy_bits"])
    # the fit's val usage is the argmax map `extract encode` wrote for the val images
    arrays = read_fsgr(encode_stage(config).output)
    val_ids = {r.image_id for r in split_records(
        load_karpathy(config.data.karpathy_json, config.data.image_root), "val")}
    rows = np.isin(arrays["image_ids"], list(val_ids))
    np.testing.assert_array_equal(
        np.bincount(arrays["codebook_index"][rows].ravel(), minlength=n_concepts), counts)


def test_report_reads_the_fits_codebook_usage(demo_run, tmp_path) -> None:
    from evaluate.report import write_report
    from evaluate.report_inputs import codebook_usage

    config, _ = demo_run
    usage = codebook_usage(config)
    saved = json.loads(codebook_usage_path(config).read_text())
    np.testing.assert_array_equal(usage.counts, saved["counts"])
    assert "val images" in usage.source and f"epoch {saved['epoch']}" in usage.source
    words = ConceptCodebook.load(concepts_stage(config).output).words
    html = write_report(tmp_path / "r.html", title="t", images=[], metrics={},
                        concept_words=words, codebook_usage=usage).read_text()
    top = int(np.argmax(usage.counts))
    share = usage.counts[top] / usage.counts.sum()
    assert f'<span class="swatch c{top}"></span>{words[top]}</th>' in html
    assert f'<td class="share">{100 * share:.1f}%</td>' in html
    assert f"{saved['codebook_used']} of {len(words)} concepts" in html


def test_fit_resumes_exactly_after_an_interruption(demo_run, tmp_path, monkeypatch) -> None:
    """`extract fit` stopped right after its first `last.pt` and run again continues from
    epoch 2 and ends with the uninterrupted fit's weights and log (on a copy of the run)."""
    config, sets = demo_run
    shutil.copytree(Path(config.data.run_root), tmp_path / "runs")
    moved = load_config(DEMO_CONFIG, [*sets, f"data.run_root={json.dumps(str(tmp_path / 'runs'))}"])
    assert decide(fit_stage(moved), moved).up_to_date  # the copy is the same finished fit
    reference = torch.load(fit_stage(moved).output, weights_only=True)["encoder"]
    save = training_loop.save_atomic

    def stop_after_first_resume_point(payload, path):
        save(payload, path)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt("interrupted after epoch 1")

    monkeypatch.setattr(training_loop, "save_atomic", stop_after_first_resume_point)
    with pytest.raises(KeyboardInterrupt):
        fit_fsgr(moved, force=True, progress=False)
    monkeypatch.undo()
    lines = fit_fsgr(moved, progress=False).lines
    assert lines[1].startswith("extract fit: resuming after epoch 1 (step ")
    resumed = torch.load(fit_stage(moved).output, weights_only=True)["encoder"]
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(resumed[name], tensor), name
    again = ("seconds", "warnings")  # timing; a resumed process states its warnings again
    assert [{k: v for k, v in r.items() if k not in again} for r in fit_log(moved)] == \
        [{k: v for k, v in r.items() if k not in again} for r in fit_log(config)]
