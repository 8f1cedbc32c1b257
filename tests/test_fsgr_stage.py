"""`extract concepts|fit|encode` on a small demo set with a trained tiny CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import extract.fsgr_encode as fsgr_encode
from extract.concepts import ConceptCodebook
from extract.fsgr_encode import FsgrMeta, check_compatible, encode_fsgr
from extract.fsgr_fit import fit_fsgr
from shared.chunked_stage import ChunkedOutput
from shared.config import load_config
from shared.datasets.demo_scenes import CATEGORIES, SYNONYMS, object_masks, patch_categories
from shared.feature_store import FeatureStore
from shared.manifest import read_manifest
from shared.stages import concepts_stage, encode_stage, fit_stage
from tests.conftest import DEMO_CONFIG


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
    assert fit_fsgr(config, progress=False) == [
        f"extract fit: up to date ({fit_stage(config).output})"]
    assert encode_fsgr(config, progress=False)[0].startswith("extract encode: up to date")


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
    lines = encode_fsgr(config, progress=False)
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
