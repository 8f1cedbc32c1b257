"""`shared.cider_reward.CiderDReward` against pycocoevalcap's CiderScorer with the same df."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer

from shared.cider_reward import CiderDReward, references_fingerprint

_SUBJECTS = ["man", "woman", "dog", "cat", "child", "group of people", "bus", "train", "horse",
             "bird", "plate of food", "skateboarder", "giraffe", "pizza", "kitchen"]
_ADJECTIVES = ["small", "large", "white", "black", "red", "young", "old", "wooden", "busy"]
_VERBS = ["sitting", "standing", "riding", "walking", "eating", "holding", "playing", "parked",
          "flying", "lying"]
_PLACES = ["on a bench", "in the street", "next to a table", "on the beach", "in a field",
           "near the water", "on a plate", "in front of a building", "with a frisbee",
           "down a hill", "at the station", "on top of a counter"]
_WORDS = sorted({w for phrase in _SUBJECTS + _ADJECTIVES + _VERBS + _PLACES
                 for w in phrase.split()} | {"a", "an", "the", "is", "and", "of", "two"})


def _caption(rng: np.random.Generator, scene: tuple[str, str, str, str]) -> list[str]:
    """A COCO-like caption about `scene`, sometimes drifting off it, 1-20 words."""
    adj, subject, verb, place = scene
    if rng.random() < 0.3:
        adj, subject = rng.choice(_ADJECTIVES), rng.choice(_SUBJECTS)
    if rng.random() < 0.3:
        verb, place = rng.choice(_VERBS), rng.choice(_PLACES)
    form = rng.integers(6)
    if form == 0:
        words = f"a {adj} {subject} {verb} {place}".split()
    elif form == 1:
        words = f"the {subject} is {verb} {place}".split()
    elif form == 2:
        words = f"a {subject} {place}".split()
    elif form == 3:
        words = f"two {adj} {subject} {verb} {place} and a {rng.choice(_SUBJECTS)}".split()
    elif form == 4:
        words = rng.choice(_WORDS, size=int(rng.integers(1, 21))).tolist()
    else:
        words = [subject.split()[-1]]
    return words[:20]


def _scene(rng: np.random.Generator) -> tuple[str, str, str, str]:
    return (str(rng.choice(_ADJECTIVES)), str(rng.choice(_SUBJECTS)), str(rng.choice(_VERBS)),
            str(rng.choice(_PLACES)))


def _training_set(seed: int, n_images: int) -> tuple[dict[int, list[list[str]]], dict]:
    rng = np.random.default_rng(seed)
    refs, scenes = {}, {}
    for k in range(n_images):
        image_id = 1000 + 7 * k
        scenes[image_id] = _scene(rng)
        refs[image_id] = [_caption(rng, scenes[image_id]) for _ in range(rng.integers(1, 6))]
    return refs, scenes


class FixedDfCiderScorer(CiderScorer):
    """pycocoevalcap's CiderScorer with a given df and ref_len instead of the batch's own.

    `compute_cider` assigns `self.ref_len = log(len(self.crefs))`; the property ignores that.
    """

    def __init__(self, document_frequency: dict, ref_len: float, n: int = 4,
                 sigma: float = 6.0) -> None:
        self._fixed_df = document_frequency
        self._fixed_ref_len = ref_len
        super().__init__(n=n, sigma=sigma)

    @property
    def ref_len(self) -> float:
        return self._fixed_ref_len

    @ref_len.setter
    def ref_len(self, value: float | None) -> None:
        pass

    def compute_doc_freq(self) -> None:
        self.document_frequency = defaultdict(float, self._fixed_df)


def _pycoco_df(references: dict[int, list[list[str]]]) -> tuple[dict, float]:
    """df and ref_len over the training references, computed by pycocoevalcap itself."""
    scorer = CiderScorer()
    for refs in references.values():
        scorer += (None, [" ".join(r) for r in refs])
    scorer.compute_doc_freq()
    return dict(scorer.document_frequency), float(np.log(float(len(scorer.crefs))))


def _pycoco_scores(df: dict, ref_len: float, references: dict, image_ids: list[int],
                   candidates: list[list[str]]) -> np.ndarray:
    scorer = FixedDfCiderScorer(df, ref_len)
    for image_id, cand in zip(image_ids, candidates):
        scorer += (" ".join(cand), [" ".join(r) for r in references[image_id]])
    scorer.compute_doc_freq()
    scores = np.array(scorer.compute_cider())
    assert scorer.ref_len == ref_len
    return scores


@pytest.fixture(scope="module")
def training() -> tuple[dict, dict, CiderDReward, dict, float]:
    refs, scenes = _training_set(0, 120)
    df, ref_len = _pycoco_df(refs)
    return refs, scenes, CiderDReward.from_references(refs), df, ref_len


def _batch(refs: dict, scenes: dict, seed: int, n_images: int = 30,
           per_image: int = 5) -> tuple[list[int], list[list[str]]]:
    rng = np.random.default_rng(seed)
    ids, cands = [], []
    chosen = rng.choice(sorted(refs), size=n_images, replace=False).tolist()
    for image_id in chosen:
        for j in range(per_image):
            kind = (j + image_id) % 8
            if kind == 0:
                cand = []  # empty
            elif kind == 1:
                cand = "a dog a dog a dog".split()  # repeated n-grams
            elif kind == 2:
                cand = list(refs[image_id][int(rng.integers(len(refs[image_id])))])  # = a ref
            elif kind == 3:  # words in no reference, also repeated
                cand = _caption(rng, scenes[image_id]) + ["zorblax", "quux", "zorblax", "quux"]
            elif kind == 4:
                cand = ["zorblax"] * int(rng.integers(1, 4))
            else:
                cand = _caption(rng, scenes[image_id])
            ids.append(image_id)
            cands.append(cand)
    return ids, cands


def test_training_df_and_ref_len_match_pycocoevalcap(training) -> None:
    refs, _, reward, df, ref_len = training
    assert reward.ref_len == pytest.approx(ref_len, abs=0)
    assert reward.n_images == len(refs)
    ours = {}
    for gid, count in enumerate(reward.df.tolist()):
        ours[gid] = count
    assert sorted(ours.values()) == sorted(int(v) for v in df.values())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_equals_pycocoevalcap_with_training_df(training, seed: int) -> None:
    """The SCST case: scored images are training images, df/ref_len over all training images;
    empty, repeated-n-gram, out-of-vocabulary and reference-identical candidates included."""
    refs, scenes, reward, df, ref_len = training
    ids, cands = _batch(refs, scenes, seed)
    expected = _pycoco_scores(df, ref_len, refs, ids, cands)
    got = reward(ids, cands)
    assert got.dtype == np.float64 and got.shape == (len(cands),)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert (got[[i for i, c in enumerate(cands) if not c]] == 0).all()
    assert got.max() > 1.0  # identical-to-a-reference candidates score high


def test_ref_counts_vary_and_odd_candidates(training) -> None:
    refs, _, reward, df, ref_len = training
    counts = {len(r) for r in refs.values()}
    assert counts == {1, 2, 3, 4, 5}
    one_ref = [i for i, r in refs.items() if len(r) == 1][:3]
    ids = one_ref + one_ref + one_ref
    cands = [refs[i][0] for i in one_ref] + [["a"]] * 3 + [refs[i][0] * 2 for i in one_ref]
    np.testing.assert_allclose(reward(ids, cands), _pycoco_scores(df, ref_len, refs, ids, cands),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("refs", [
    {5: [["a", "dog"]]},  # one image: ref_len = log 1 = 0, every idf 0
    {1: [["a", "dog", "on", "a", "bench"], []], 2: [["a", "cat"], ["a", "cat"], ["a"]],
     3: [["a", "dog", "a", "dog"], ["the", "bus"]]},  # "a" in every image: idf 0; empty ref
])
def test_tiny_training_sets(refs: dict) -> None:
    df, ref_len = _pycoco_df(refs)
    reward = CiderDReward.from_references(refs)
    cands = [[], ["a"], ["a", "dog"], ["a", "cat", "a", "cat"], ["the", "bus", "zebra"],
             ["a", "dog", "on", "a", "bench"]]
    for image_id in refs:
        ids = [image_id] * len(cands)
        np.testing.assert_allclose(reward(np.array(ids), cands),
                                   _pycoco_scores(df, ref_len, refs, ids, cands),
                                   rtol=0, atol=1e-6)


def test_plain_cider_when_training_set_is_the_batch() -> None:
    """Without any override: training refs == the scored images, one candidate each."""
    refs, scenes = _training_set(5, 40)
    rng = np.random.default_rng(9)
    ids = sorted(refs)
    cands = [_caption(rng, scenes[i]) or ["a"] for i in ids]
    _, expected = Cider().compute_score({i: [" ".join(r) for r in refs[i]] for i in ids},
                                        {i: [" ".join(c)] for i, c in zip(ids, cands)})
    got = CiderDReward.from_references(refs)(ids, cands)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_string_candidates_score_ids_and_errors(training) -> None:
    refs, scenes, reward, _, _ = training
    ids, cands = _batch(refs, scenes, 4, n_images=5)
    base = reward(ids, cands)
    np.testing.assert_array_equal(reward(ids, [" ".join(c) for c in cands]), base)
    words = ["<pad>", "<eos>", *_WORDS, "zorblax", "quux"]
    pos = {w: i for i, w in enumerate(words)}
    width = max(len(c) for c in cands) + 2
    arr = np.zeros((len(cands), width), dtype=np.int64)
    for r, c in enumerate(cands):
        arr[r, :len(c)] = [pos[w] for w in c]
        arr[r, len(c)] = 1
        arr[r, len(c) + 1:] = pos["a"]  # after eos: ignored
    np.testing.assert_array_equal(reward.score_ids(ids, arr, words, eos_id=1, pad_id=0), base)
    assert reward([], []).shape == (0,)
    with pytest.raises(ValueError, match="123456"):
        reward([123456], [["a", "dog"]])
    with pytest.raises(ValueError, match="image ids"):
        reward(ids[:2], cands[:3])


def test_save_load_round_trip(training, tmp_path) -> None:
    refs, scenes, reward, _, _ = training
    path = tmp_path / "cider_df.npz"
    reward.save(path)
    loaded = CiderDReward.load(path, fingerprint=references_fingerprint(refs))
    ids, cands = _batch(refs, scenes, 7)
    np.testing.assert_array_equal(loaded(ids, cands), reward(ids, cands))
    assert loaded.ref_len == reward.ref_len and loaded.fingerprint == reward.fingerprint


def test_load_corrupt_or_mismatching_file_names_it(training, tmp_path) -> None:
    refs, _, reward, _, _ = training
    good = tmp_path / "good.npz"
    reward.save(good)
    data = good.read_bytes()
    cases = {"garbage.npz": b"not an npz at all", "truncated.npz": data[:len(data) // 2]}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=name) as info:
            CiderDReward.load(path)
        assert "\n" not in str(info.value)
    other = tmp_path / "other.npz"
    with np.load(good) as z:
        arrays = dict(z)
    arrays["ref_norm"] = arrays["ref_norm"][:-1]
    np.savez(other, **arrays)
    with pytest.raises(ValueError, match="other.npz.*inconsistent"):
        CiderDReward.load(other)
    del arrays["df"]
    np.savez(other, **arrays)
    with pytest.raises(ValueError, match="other.npz"):
        CiderDReward.load(other)
    with pytest.raises(ValueError, match="good.npz.*other references"):
        CiderDReward.load(good, fingerprint=references_fingerprint({1: [["a", "cat"]]}))
    with pytest.raises(ValueError, match="missing.npz"):
        CiderDReward.load(tmp_path / "missing.npz")


def test_building_rejects_empty_input() -> None:
    with pytest.raises(ValueError):
        CiderDReward.from_references({})
    with pytest.raises(ValueError, match="7"):
        CiderDReward.from_references({1: [["a", "cat"]], 7: []})
