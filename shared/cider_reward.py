"""Fast, exact CIDEr-D reward for self-critical sequence training (SCST).

Computes, per candidate, the same number as pycocoevalcap's `CiderScorer.compute_cider` when
that scorer is given the training document frequencies and `ref_len = log(n_training_images)`
(n = 1..4, sigma = 6, clipped tf-idf, gaussian length penalty, x10, mean over references and
n-gram orders), but with numpy over the whole batch instead of per-n-gram Python dicts.

Layout (all built once by `CiderDReward.from_references`, cacheable with `save` / `load`):

* words -> ids 0..V-1 (sorted reference words);
* n-grams get per-order ids through a trie: order-1 id = word id, order-k id = position of
  `prefix_id * V + last_word` in the sorted array `keys[k]`; one global id space (order blocks
  concatenated) of size G;
* df per global n-gram id (number of images whose references contain it), idf = ref_len -
  log(max(1, df)) as in pycocoevalcap;
* per image, the sorted keys `image_row * G + gid` of the n-grams in any of its references and
  a [keys, max refs per image] matrix of their term frequency in each reference, so one binary
  search within the image's segment gives a candidate n-gram's tf in all its references (the
  matrix is padded to the largest reference count of any image: fine for COCO's 5-7);
* per reference, per-order tf-idf norms and pycocoevalcap's "length" (its count of *bigrams*,
  i.e. max(words - 1, 0): a quirk of the original code, reproduced on purpose).

Candidate tokens are joined with spaces and re-split (`" ".join(tokens).split()`), exactly what
pycocoevalcap sees, so tokens containing spaces or empty tokens behave the same there and here.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
_MAX_KEY = np.iinfo(np.int64).max

Caption = str | Sequence[str]


def _split(caption: Caption) -> list[str]:
    """Whitespace tokens of a caption, as pycocoevalcap's `precook` gets them."""
    return caption.split() if isinstance(caption, str) else " ".join(caption).split()


def references_fingerprint(references: Mapping[int, Sequence[Caption]]) -> str:
    """sha256 over the (sorted) image ids and their whitespace-normalised references; compare
    with `CiderDReward.fingerprint` / pass to `CiderDReward.load`."""
    keys = sorted(references, key=int)
    return _fingerprint([int(k) for k in keys],
                        [[_split(r) for r in references[k]] for k in keys])


def _fingerprint(image_ids: Sequence[int], split_refs: Sequence[Sequence[list[str]]]) -> str:
    digest = hashlib.sha256()
    for image_id, refs in zip(image_ids, split_refs):
        digest.update(f"{image_id}\x1e".encode())
        for ref in refs:
            digest.update(" ".join(ref).encode() + b"\x1f")
    return digest.hexdigest()


def _positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For concatenated sequences of `lengths`: owner index and tokens left (incl. this one)."""
    owner = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(int(lengths.sum()), dtype=np.int64) - starts[owner]
    return owner, lengths[owner] - pos


def _search_segments(table: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `keys` in sorted `table` and whether each is there, each key searched only
    in its own `table[lo:hi]` (a vectorised binary search: a few cache misses per key where a
    search over the whole table of millions costs ~20)."""
    lo, hi = lo.copy(), hi.copy()
    last = len(table) - 1
    if last < 0:
        return np.zeros(len(keys), dtype=bool), np.zeros(len(keys), dtype=np.int64)
    for _ in range(int((hi - lo).max(initial=0)).bit_length()):
        mid = (lo + hi) >> 1
        right = (table[np.minimum(mid, last)] < keys) & (lo < hi)
        lo = np.where(right, mid + 1, lo)
        hi = np.where(right, hi, mid)
    np.minimum(lo, last, out=lo)
    return table[lo] == keys, lo


def ids_to_words(ids: np.ndarray, words: Sequence[str], eos_id: int | None = None,
                 pad_id: int | None = None) -> list[list[str]]:
    """Token-id captions [n, L] as word lists: each cut at its first `eos_id`, `pad_id`
    dropped, ids mapped through `words` (the form `CiderDReward` scores)."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids must be 2-d [n, L], got shape {ids.shape}")
    captions = []
    for row in ids.tolist():
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id)]
        captions.append([words[i] for i in row if i != pad_id])
    return captions


class CiderDReward:
    """CIDEr-D of candidates against training references, with the training df (SCST reward)."""

    _ARRAYS = ("format_version", "n", "sigma", "n_images", "vocab", "order_sizes", "df",
               "image_ids", "image_ref_start", "image_ref_count", "image_keys", "image_tf",
               "ref_norm", "ref_length", "fingerprint")

    def __init__(self, *, n: int, sigma: float, vocab: np.ndarray, trie_keys: list[np.ndarray],
                 df: np.ndarray, image_ids: np.ndarray, image_ref_start: np.ndarray,
                 image_ref_count: np.ndarray, image_keys: np.ndarray, image_tf: np.ndarray,
                 ref_norm: np.ndarray, ref_length: np.ndarray, fingerprint: str) -> None:
        """Low level; use `from_references` or `load`."""
        self.n = int(n)
        self.sigma = float(sigma)
        self.vocab = vocab
        self.fingerprint = fingerprint
        self._word_index = {w: i for i, w in enumerate(vocab.tolist())}
        self._trie_keys = trie_keys  # orders 2..n
        sizes = [len(vocab)] + [len(k) for k in trie_keys]
        # trie_keys[k-2][seg[p]:seg[p + 1]] are the order-k extensions of order-(k-1) id p
        self._trie_seg = [np.searchsorted(keys, np.arange(size + 1, dtype=np.int64) * len(vocab))
                          for keys, size in zip(trie_keys, sizes)]
        self._order_offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._n_grams = int(self._order_offset[-1])
        self.df = df
        self.image_ids = image_ids
        self.n_images = len(image_ids)
        self.ref_len = float(np.log(float(self.n_images)))
        self.idf = self.ref_len - np.log(np.maximum(1.0, df.astype(np.float64)))
        self._row = {i: r for r, i in enumerate(image_ids.tolist())}
        self._image_ref_start = image_ref_start
        self._image_ref_count = image_ref_count
        self._image_keys = image_keys
        # image_keys[_image_seg[row]:_image_seg[row + 1]] are the n-grams of image `row`
        self._image_seg = np.searchsorted(
            image_keys, np.arange(self.n_images + 1, dtype=np.int64) * self._n_grams)
        self._image_tf = image_tf
        self._ref_norm = ref_norm
        self._ref_length = ref_length

    # ------------------------------------------------------------------ building
    @classmethod
    def from_references(cls, references: Mapping[int, Sequence[Caption]], n: int = 4,
                        sigma: float = 6.0) -> CiderDReward:
        """Build from training references: image id -> reference captions (token lists)."""
        if not references:
            raise ValueError("CiderDReward needs at least one image with references")
        keys = sorted(references, key=int)
        image_ids = np.array([int(k) for k in keys], dtype=np.int64)
        if len(np.unique(image_ids)) != len(image_ids):
            raise ValueError("image ids are not unique as integers")
        split = []
        for key in keys:
            refs = references[key]
            if len(refs) == 0:
                raise ValueError(f"image {key!r} has no reference captions")
            split.append([_split(r) for r in refs])
        vocab = np.array(sorted({w for refs in split for ref in refs for w in ref}), dtype=str)
        index = {w: i for i, w in enumerate(vocab.tolist())}
        counts = np.array([len(refs) for refs in split], dtype=np.int64)
        lengths = np.array([len(ref) for refs in split for ref in refs], dtype=np.int64)
        words = np.fromiter((index[w] for refs in split for ref in refs for w in ref),
                            dtype=np.int64, count=int(lengths.sum()))
        n_refs = len(lengths)
        ref_of, left = _positions(lengths)

        # trie ids per order; keep (ref, order-local id) for every n-gram occurrence
        V = len(vocab)
        trie_keys: list[np.ndarray] = []
        occ_ref, occ_gid = [ref_of], [words]
        prev = words  # order-k id of the n-gram starting at each position (valid where left>=k)
        offset = V
        for k in range(2, n + 1):
            at = np.flatnonzero(left >= k)
            if V and int(prev.max(initial=0)) >= _MAX_KEY // max(V, 1):
                raise ValueError("too many n-grams for int64 trie keys")
            key = prev[at] * V + words[at + k - 1]
            uniq, inv = np.unique(key, return_inverse=True)
            trie_keys.append(uniq)
            cur = np.full(len(words), -1, dtype=np.int64)
            cur[at] = inv
            occ_ref.append(ref_of[at])
            occ_gid.append(inv + offset)
            offset += len(uniq)
            prev = cur
        G = offset
        n_images, max_refs = len(image_ids), int(counts.max())
        if n_refs * G >= _MAX_KEY or n_images * G >= _MAX_KEY:
            raise ValueError("too many references x n-grams for int64 keys")
        occ_key = np.concatenate(occ_ref) * G + np.concatenate(occ_gid)
        ref_keys, ref_tf = np.unique(occ_key, return_counts=True)
        entry_ref, entry_gid = ref_keys // G, ref_keys % G

        # per image: sorted image * G + gid keys, and the tf in each of its references
        ref_start = np.cumsum(counts) - counts
        image_of_ref = np.repeat(np.arange(n_images, dtype=np.int64), counts)
        entry_image = image_of_ref[entry_ref]
        image_keys, inv = np.unique(entry_image * G + entry_gid, return_inverse=True)
        tf_dtype = np.uint8 if ref_tf.max(initial=0) <= np.iinfo(np.uint8).max else np.int32
        image_tf = np.zeros((len(image_keys), max_refs), dtype=tf_dtype)
        image_tf[inv, entry_ref - ref_start[entry_image]] = ref_tf
        # df: images whose references contain the n-gram (each image counted once)
        df = np.bincount(image_keys % G, minlength=G).astype(np.int64)

        self = cls(n=n, sigma=sigma, vocab=vocab, trie_keys=trie_keys, df=df,
                   image_ids=image_ids, image_ref_start=ref_start, image_ref_count=counts,
                   image_keys=image_keys, image_tf=image_tf, ref_norm=np.zeros((n_refs, n)),
                   ref_length=np.maximum(lengths - 1, 0),
                   fingerprint=_fingerprint(image_ids.tolist(), split))
        vec = ref_tf * self.idf[entry_gid]
        order = np.searchsorted(self._order_offset, entry_gid, side="right") - 1
        self._ref_norm = np.sqrt(np.bincount(entry_ref * n + order, vec * vec,
                                             minlength=n_refs * n)).reshape(n_refs, n)
        return self

    # ------------------------------------------------------------------ scoring
    def _rows(self, image_ids: Sequence[int]) -> np.ndarray:
        rows = np.empty(len(image_ids), dtype=np.int64)
        row = self._row
        for j, image_id in enumerate(image_ids):
            try:
                rows[j] = row[int(image_id)]
            except KeyError:
                raise ValueError(f"image id {image_id!r} is not among the CiderDReward "
                                 f"training references ({self.n_images} images)") from None
        return rows

    def __call__(self, image_ids: Sequence[int], candidates: Sequence[Caption]) -> np.ndarray:
        """CIDEr-D (float64 [len(candidates)]) of each candidate against its image's references."""
        n_c = len(candidates)
        if len(image_ids) != n_c:
            raise ValueError(f"{len(image_ids)} image ids for {n_c} candidates")
        rows = self._rows(image_ids)
        if n_c == 0:
            return np.zeros(0)
        n, index, V = self.n, self._word_index, len(self.vocab)

        # words -> ids; unseen words get call-local ids >= V (they can never match)
        toks = [_split(c) for c in candidates]
        lengths = np.fromiter(map(len, toks), dtype=np.int64, count=n_c)
        flat = [index.get(w, -1) for t in toks for w in t]
        if -1 in flat:
            unknown: dict[str, int] = {}
            flat_words = [w for t in toks for w in t]
            flat = [i if i >= 0 else unknown.setdefault(flat_words[p], V + len(unknown))
                    for p, i in enumerate(flat)]
        words = np.array(flat, dtype=np.int64)
        T = len(words)
        W = max(V, int(words.max(initial=-1)) + 1, 1)  # > every call word id
        cand_of, left = _positions(lengths)

        # per order: global id (-1 if not in training refs) and a call-local identity
        e_cand, e_order, e_local, e_gid = [], [], [], []
        gid_prev = np.where(words < V, words, -1)
        loc_prev = words
        e_cand.append(cand_of), e_order.append(np.zeros(T, np.int64))
        e_local.append(words), e_gid.append(gid_prev)
        for k in range(2, n + 1):
            at = np.flatnonzero(left >= k)
            nxt = words[at + k - 1]
            p = gid_prev[at]
            gid = np.full(len(at), -1, dtype=np.int64)
            ok = np.flatnonzero((p >= 0) & (nxt < V))
            po = p[ok]
            seg = self._trie_seg[k - 2]
            hit, pos = _search_segments(self._trie_keys[k - 2], seg[po], seg[po + 1],
                                        po * V + nxt[ok])
            gid[ok[hit]] = pos[hit]
            _, loc = np.unique(loc_prev[at] * W + nxt, return_inverse=True)
            gid_prev = np.full(T, -1, dtype=np.int64)
            gid_prev[at] = gid
            loc_prev = np.zeros(T, dtype=np.int64)
            loc_prev[at] = loc
            e_cand.append(cand_of[at]), e_order.append(np.full(len(at), k - 1, np.int64))
            e_local.append(loc), e_gid.append(np.where(gid >= 0, gid + self._order_offset[k - 1],
                                                       -1))
        cand = np.concatenate(e_cand)
        order = np.concatenate(e_order)
        local = np.concatenate(e_local)
        gids = np.concatenate(e_gid)
        span = max(W, T + 1)
        _, first, tf = np.unique((cand * n + order) * span + local, return_index=True,
                                 return_counts=True)
        cand, order, gids = cand[first], order[first], gids[first]

        known = np.flatnonzero(gids >= 0)
        idf = np.full(len(gids), self.ref_len)
        idf[known] = self.idf[gids[known]]
        vec = tf * idf
        norm_h = np.sqrt(np.bincount(cand * n + order, vec * vec,
                                     minlength=n_c * n)).reshape(n_c, n)

        # candidate n-grams x reference slots of its image: [n_c * max_refs, n] sums
        R = self._image_tf.shape[1]
        acc = np.zeros(n_c * R * n)
        if len(known):
            r = rows[cand[known]]
            hit, pos = _search_segments(self._image_keys, self._image_seg[r],
                                        self._image_seg[r + 1], r * self._n_grams + gids[known])
            e, pos = known[hit], pos[hit]
            vec_r = self._image_tf[pos] * idf[e][:, None]  # [hits, R], 0 where absent
            contrib = np.minimum(vec[e][:, None], vec_r) * vec_r
            slot = (cand[e] * R)[:, None] + np.arange(R)
            acc = np.bincount((slot * n + order[e][:, None]).ravel(), contrib.ravel(),
                              minlength=n_c * R * n)
        val = acc.reshape(n_c, R, n)
        n_ref = self._image_ref_count[rows]
        valid = np.arange(R) < n_ref[:, None]  # [n_c, R]
        ref = np.where(valid, self._image_ref_start[rows][:, None] + np.arange(R), 0)
        nh, nr = norm_h[:, None, :], np.where(valid[:, :, None], self._ref_norm[ref], 0.0)
        both = (nh != 0) & (nr != 0)
        val = np.where(both, val / np.where(both, nh * nr, 1.0), val)
        delta = (np.maximum(lengths - 1, 0)[:, None] - self._ref_length[ref]).astype(np.float64)
        penalty = np.power(np.e, -(delta ** 2) / (2 * self.sigma ** 2))
        val = val * np.where(valid, penalty, 0.0)[:, :, None]
        return val.sum(axis=1).mean(axis=1) / n_ref * 10.0

    def score_ids(self, image_ids: Sequence[int], ids: np.ndarray, words: Sequence[str],
                  eos_id: int | None = None, pad_id: int | None = None) -> np.ndarray:
        """Score token-id captions [n, L]: cut at the first `eos_id`, drop `pad_id`, decode
        with `words[id]`, then `__call__`."""
        return self(image_ids, ids_to_words(ids, words, eos_id, pad_id))

    # ------------------------------------------------------------------ cache
    def save(self, path: str | Path) -> None:
        """Write everything to an .npz (no pickles)."""
        arrays = {
            "format_version": np.int64(FORMAT_VERSION), "n": np.int64(self.n),
            "sigma": np.float64(self.sigma), "n_images": np.int64(self.n_images),
            "vocab": self.vocab, "order_sizes": np.diff(self._order_offset), "df": self.df,
            "image_ids": self.image_ids, "image_ref_start": self._image_ref_start,
            "image_ref_count": self._image_ref_count, "image_keys": self._image_keys,
            "image_tf": self._image_tf, "ref_norm": self._ref_norm, "ref_length": self._ref_length,
            "fingerprint": np.array(self.fingerprint)}
        for k, keys in enumerate(self._trie_keys, start=2):
            arrays[f"trie_keys_{k}"] = keys
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> CiderDReward:
        """Read a `save`d cache; ValueError naming `path` if it is corrupt, inconsistent, or
        (when `fingerprint` is given, see `references_fingerprint`) built from other refs."""
        try:
            with np.load(path, allow_pickle=False) as z:
                a = {name: z[name] for name in cls._ARRAYS}
                if int(a["format_version"]) != FORMAT_VERSION:
                    raise ValueError(f"format version {int(a['format_version'])}, "
                                     f"expected {FORMAT_VERSION}")
                n = int(a["n"])
                trie = [z[f"trie_keys_{k}"] for k in range(2, n + 1)]
            sizes = a["order_sizes"]
            n_images, n_refs = len(a["image_ids"]), len(a["ref_length"])
            checks = {
                "order sizes": len(sizes) == n and int(sizes[0]) == len(a["vocab"])
                and all(int(s) == len(t) for s, t in zip(sizes[1:], trie)),
                "df": a["df"].shape == (int(sizes.sum()),),
                "images": int(a["n_images"]) == n_images >= 1
                and a["image_ref_start"].shape == a["image_ref_count"].shape == (n_images,)
                and int(a["image_ref_count"].sum()) == n_refs,
                "references": a["ref_norm"].shape == (n_refs, n)
                and a["image_tf"].shape == (len(a["image_keys"]),
                                            int(a["image_ref_count"].max(initial=0))),
            }
            bad = [name for name, ok in checks.items() if not ok]
            if bad:
                raise ValueError("inconsistent " + ", ".join(bad))
            saved_fp = str(a["fingerprint"])
            if fingerprint is not None and saved_fp != fingerprint:
                raise ValueError(f"built from other references (fingerprint {saved_fp[:12]}, "
                                 f"expected {fingerprint[:12]})")
            return cls(n=n, sigma=float(a["sigma"]), vocab=a["vocab"], trie_keys=trie,
                       df=a["df"], image_ids=a["image_ids"],
                       image_ref_start=a["image_ref_start"],
                       image_ref_count=a["image_ref_count"], image_keys=a["image_keys"],
                       image_tf=a["image_tf"], ref_norm=a["ref_norm"], ref_length=a["ref_length"],
                       fingerprint=saved_fp)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError,
                zipfile.BadZipFile) as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ValueError(f"{path}: not a usable CiderDReward cache ({detail})") from None
