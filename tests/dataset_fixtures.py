"""Miniature Visual Genome, Flickr30k and nocaps folders in the datasets' published formats
(field names, nesting, id types as the public files have them), and a fast pipeline run.

`run_pipeline` takes a shipped config's dataset through prepare -> extract (vocab, CLIP,
concepts, FSGR fit / encode) -> one training step -> score, with the repo's tiny CLIP and
model sizes small enough for seconds on a CPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30),
           "yellow": (230, 220, 30)}
OBJECTS = ["dog", "cat", "tree", "car"]


def write_image(path: Path, seed: int, size: tuple[int, int] = (72, 56)) -> None:
    """A small JPEG: a coloured box on noise."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, size=(size[1], size[0], 3), dtype=np.uint8)
    colour = list(COLOURS.values())[seed % len(COLOURS)]
    pixels[10:40, 10:50] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def _dump(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def scene_words(seed: int) -> tuple[str, str, str]:
    """(colour, object, other object) of image `seed`."""
    colour = list(COLOURS)[seed % len(COLOURS)]
    return colour, OBJECTS[seed % len(OBJECTS)], OBJECTS[(seed + 1) % len(OBJECTS)]


# ----------------------------------------------------------------------------- Visual Genome

VG_TRAIN, VG_VAL, VG_TEST = list(range(1, 11)), [11, 12, 13], [14, 15, 16]
LEAKED = {3: 391895, 7: 522418}      # VG train image -> its COCO id, in COCO's Karpathy val/test
COCO_TRAIN_ONLY = {5: 184613}        # VG train image whose COCO id is a COCO *train* image


def write_visual_genome(root: Path, coco_json: Path) -> None:
    """VG 1.2 files + Krause paragraphs for 16 images (ids 1..16; 1..10 Krause train), half
    in VG_100K/, half in VG_100K_2/; a COCO Karpathy json in which two of the VG training
    images (LEAKED) are val / test images."""
    ids = [*VG_TRAIN, *VG_VAL, *VG_TEST]
    image_data, regions, objects, attributes, paragraphs = [], [], [], [], []
    object_id = region_id = 1000
    for image_id in ids:
        folder = "VG_100K" if image_id % 2 else "VG_100K_2"
        write_image(root / folder / f"{image_id}.jpg", image_id)
        coco_id = LEAKED.get(image_id, COCO_TRAIN_ONLY.get(image_id))
        image_data.append({"width": 72, "url": f"https://cs.stanford.edu/people/rak248/{folder}/"
                                               f"{image_id}.jpg",
                           "height": 56, "image_id": image_id, "coco_id": coco_id,
                           "flickr_id": None if coco_id else 10_000 + image_id})
        colour, obj, other = scene_words(image_id)
        phrases = [(f"a {colour} {obj}", 40, 30), (f"{colour} {obj} on the left", 40, 30),
                   (f"A {colour}  {obj}.", 30, 20),  # the same words as the first: dropped
                   (f"a {other} in the corner", 10, 10), (f"small {other}", 5, 5)]
        entries = []
        for phrase, w, h in phrases:
            region_id += 1
            entries.append({"region_id": region_id, "width": w, "height": h,
                            "image_id": image_id, "phrase": phrase, "y": 10, "x": 10})
        regions.append({"regions": entries, "id": image_id})
        names = [(obj, [10, 10, 40, 30], [colour]), (other, [50, 30, 10, 10], ["small"]),
                 ("doggy" if image_id % 3 == 0 else "Tree ", [0, 0, 5, 5], None)]
        objs, attrs = [], []
        for name, (x, y, w, h), attr in names:
            object_id += 1
            objs.append({"synsets": [f"{name.strip().lower()}.n.01"], "h": h,
                         "object_id": object_id, "names": [name], "w": w, "y": y, "x": x})
            entry = {"synsets": [], "h": h, "object_id": object_id, "names": [name], "w": w,
                     "y": y, "x": x}
            if attr is not None:
                entry["attributes"] = attr
            attrs.append(entry)
        objects.append({"image_id": image_id, "objects": objs,
                        "image_url": f"https://cs.stanford.edu/people/rak248/{folder}/"
                                     f"{image_id}.jpg"})
        attributes.append({"image_id": image_id, "attributes": attrs})
        paragraphs.append({"url": f"https://cs.stanford.edu/people/rak248/{folder}/"
                                  f"{image_id}.jpg", "image_id": image_id,
                           "paragraph": f"There is a {colour} {obj} in the picture. A {other} "
                                        f"is next to the {obj}. The {obj} is {colour}. "})
    _dump(root / "image_data.json", image_data)
    _dump(root / "region_descriptions.json", regions)
    _dump(root / "objects.json", objects)
    _dump(root / "attributes.json", attributes)
    _dump(root / "paragraphs_v1.json", paragraphs)
    _dump(root / "train_split.json", VG_TRAIN)
    _dump(root / "val_split.json", VG_VAL)
    _dump(root / "test_split.json", VG_TEST)
    (root / "object_alias.txt").write_text("dog,doggy,puppy\ncar,automobile\n")
    (root / "relationship_alias.txt").write_text("on,on top of\nnext to,beside\n")
    coco_images = [{"split": split, "filepath": "val2014", "filename": f"x_{cid}.jpg",
                    "cocoid": cid, "imgid": k, "sentids": [k],
                    "sentences": [{"tokens": ["a", "photo"], "raw": "A photo.", "imgid": k,
                                   "sentid": k}]}
                   for k, (cid, split) in enumerate([(LEAKED[3], "val"), (LEAKED[7], "test"),
                                                     (COCO_TRAIN_ONLY[5], "train")])]
    _dump(coco_json, {"images": coco_images, "dataset": "coco"})


# ----------------------------------------------------------------------------- Flickr30k


def flickr_entry(imgid: int, split: str) -> dict[str, Any]:
    """An image of Karpathy's dataset_flickr30k.json (no filepath, integer imgid)."""
    colour, obj, other = scene_words(imgid)
    raws = [f"A {colour} {obj} stands near a {other}.", f"The {obj} is {colour}.",
            f"A {colour} {obj} and a {other}.", f"Someone photographs a {colour} {obj}.",
            f"A {obj} that is {colour}."]
    sentences = [{"tokens": raw.lower().rstrip(".").split(), "raw": raw, "imgid": imgid,
                  "sentid": imgid * 5 + k} for k, raw in enumerate(raws)]
    return {"sentids": [s["sentid"] for s in sentences], "imgid": imgid, "sentences": sentences,
            "split": split, "filename": f"{1000092795 + imgid}.jpg"}


def write_flickr30k(root: Path) -> None:
    """dataset_flickr30k.json (10 train, 3 val, 3 test) + flickr30k-images/."""
    splits = ["train"] * 10 + ["val"] * 3 + ["test"] * 3
    entries = [flickr_entry(i, split) for i, split in enumerate(splits)]
    for entry in entries:
        write_image(root / "flickr30k-images" / entry["filename"], entry["imgid"])
    _dump(root / "dataset_flickr30k.json", {"images": entries, "dataset": "flickr30k"})


# ----------------------------------------------------------------------------- nocaps

NOCAPS_DOMAINS = ["in-domain", "near-domain", "out-domain"]


def write_nocaps(root: Path, n: int = 9) -> None:
    """nocaps_val_4500_captions.json (n images, domains in turn, ten captions each) +
    images/validation/<file_name>."""
    images, annotations = [], []
    for image_id in range(n):
        file_name = f"{0x0013ea2087020901 + image_id:016x}.jpg"
        write_image(root / "images" / "validation" / file_name, image_id)
        images.append({"id": image_id, "file_name": file_name, "height": 56, "width": 72,
                       "open_images_id": file_name[:-4],
                       "coco_url": f"https://s3.amazonaws.com/nocaps/val/{file_name}",
                       "domain": NOCAPS_DOMAINS[image_id % 3]})
        colour, obj, other = scene_words(image_id)
        for k in range(10):
            annotations.append({"image_id": image_id, "id": image_id * 10 + k,
                                "caption": f"A {colour} {obj} next to a {other}."})
    _dump(root / "nocaps_val_4500_captions.json",
          {"info": {"url": "http://nocaps.org", "version": "0.1"}, "licenses": [],
           "images": images, "annotations": annotations})


# ----------------------------------------------------------------------------- pipeline

SMALL_MODEL = [
    'clip.model="demo-tiny-clip"', "clip.batch_size=8", "clip.num_workers=0",
    'run.device="cpu"', "store.rows_per_chunk=8", "data.min_word_count=1",
    "fsgr.d_model=64", "fsgr.n_layers=1", "fsgr.n_heads=2", "fsgr.d_ff=64", "fsgr.top_k=4",
    "fsgr.epochs=1", "fsgr.batch_size=8", "fsgr.warmup_steps=1", "fsgr.max_anchors=256",
    "fsgr.captions_per_image=1", "fsgr.concept_min_count=1",
    "decoder.d_model=64", "decoder.n_heads=2", "decoder.n_dec_layers=1", "decoder.d_ff=64",
    "memory.self=false", "train.batch_size=16", "train.max_epochs=1", "train.warmup_steps=1",
    "train.patience=1", "scst.enabled=false", "eval.batch_size=8", "eval.spice=false",
    "eval.beam_size=2"]
"""Overrides that make any shipped config run in seconds on the tiny CLIP."""


class _NoMeteor:
    """METEOR stand-in (0 for every image) for tests that time scoring, not METEOR."""

    def compute_score(self, gts, res):  # noqa: ANN001, ANN201
        return 0.0, [0.0] * len(res)


def fast_scoring(monkeypatch) -> None:  # noqa: ANN001
    """Score without Java: whitespace tokens for PTB's, METEOR 0; BLEU, ROUGE-L and CIDEr
    stay pycocoevalcap's (each Java start costs seconds; the VG test scores with Java)."""
    import evaluate.coco_metrics as coco_metrics

    monkeypatch.setattr(coco_metrics, "ptb_tokenize", lambda caps: {
        i: [" ".join(c.lower().replace(".", " ").split()) for c in cs]
        for i, cs in caps.items()})
    monkeypatch.setattr(coco_metrics, "Meteor", _NoMeteor)


def run_pipeline(config, score_split: bool = True) -> dict[str, Any] | None:  # noqa: ANN001
    """prepare was run; extract -> train (one step) -> score; the metrics.json payload
    (None without `score_split`)."""
    from evaluate.score import score
    from extract.clip_features import extract_clip
    from extract.concepts import build_concepts
    from extract.fsgr_encode import encode_fsgr
    from extract.fsgr_fit import fit_fsgr
    from extract.vocab_stage import build_vocab
    from shared.stages import eval_dir
    from train.trainer import train

    build_vocab(config)
    assert extract_clip(config, progress=False).complete
    build_concepts(config)
    fit_fsgr(config, progress=False)
    encode_fsgr(config, progress=False)
    train(config, progress=False)
    if not score_split:
        return None
    score(config, progress=False)
    return json.loads((eval_dir(config) / "metrics.json").read_text())


def path_set(key: str, value: Path | list[Path]) -> str:
    """A `--set` of a path (or list of paths)."""
    if isinstance(value, list):
        return f"{key}=[{', '.join(json.dumps(str(v)) for v in value)}]"
    return f"{key}={json.dumps(str(value))}"


@contextmanager
def local_http_server(body_of: Callable[[str], tuple[bytes, int]]) -> Iterator[str]:
    """A local HTTP server for the block; `body_of(path)` gives the bytes it sends and the
    Content-Length it announces (more than sent: the connection closes early). Yields its
    root URL."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            body, length = body_of(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
