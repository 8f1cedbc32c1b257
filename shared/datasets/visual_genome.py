"""Visual Genome 1.2 (+ the Krause et al. 2017 paragraphs) -> the files the pipeline reads.

Reads, under `vg.root` (the files as published, unchanged):

    image_data.json           [{"image_id", "url", "width", "height", "coco_id", "flickr_id"}]
    objects.json              [{"image_id", "objects": [{"object_id", "x", "y", "w", "h",
                                                          "names": [..], "synsets": [..]}]}]
    attributes.json           [{"image_id", "attributes": [{"object_id", "names",
                                                             "attributes"?: [..], ..}]}]
    object_alias.txt          lines of comma-separated synonyms, the first one canonical
    region_descriptions.json  [{"id": image_id, "regions": [{"region_id", "image_id", "phrase",
                                                             "x", "y", "width", "height"}]}]
                              (vg.caption_source = "regions")
    paragraphs_v1.json        [{"url", "image_id", "paragraph"}]       (vg.caption_source =
    train_split.json, val_split.json, test_split.json  [image ids]      "paragraphs")
    VG_100K/<image_id>.jpg, VG_100K_2/<image_id>.jpg

and writes `data.karpathy_json`, `data.captions_json[0]` (COCO captions), `data.instances_json[0]`
(COCO instances of the `vg.object_categories` most frequent canonical object names, with their
aliases as `synonyms`, so CHAIR counts VG objects), `vg.concepts_json` (object and attribute
name counts of the training images, for `fsgr.concept_source = "vg"`) and `vg_leakage.json`
beside the Karpathy json.

Captions: "paragraphs": one paragraph per image, Krause's train/val/test ids; "regions": the
`vg.regions_per_image` largest region phrases of each image (by box area, duplicates after
tokenisation dropped), `vg.n_test` / `vg.n_val` images drawn with `vg.seed` for test / val.

Leakage guard: an image whose `coco_id` is in the val or test split of `vg.coco_karpathy_json`
(COCO's Karpathy json) is left out of the VG training split, so a model pretrained on VG can be
tested on COCO; the count and ids are printed and written to `vg_leakage.json`.
`relationship_alias.txt` is not read: no relationships are used.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import Config, ConfigError
from shared.datasets.caption_files import (CaptionedImage, image_entry, split_counts,
                                           write_caption_files, write_compact_json)
from shared.vocabulary import tokenize

IMAGE_DATA = "image_data.json"
OBJECTS = "objects.json"
ATTRIBUTES = "attributes.json"
OBJECT_ALIAS = "object_alias.txt"
REGIONS = "region_descriptions.json"
PARAGRAPHS = "paragraphs_v1.json"
SPLIT_FILES = {"train": "train_split.json", "val": "val_split.json", "test": "test_split.json"}
IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")
LEAKAGE_NAME = "vg_leakage.json"


class VgFormatError(ValueError):
    """A Visual Genome file that does not have the published layout; names file and field."""


@dataclass(frozen=True)
class VgImage:
    """An entry of image_data.json."""

    image_id: int
    width: int
    height: int
    coco_id: int | None
    folder: str  # VG_100K or VG_100K_2 (from the url; checked on disk)


@dataclass(frozen=True)
class VgObject:
    """An object of objects.json, its first name mapped to its canonical alias."""

    object_id: int
    name: str
    bbox: tuple[int, int, int, int]


# ----------------------------------------------------------------------------- reading


def read_json(path: Path) -> Any:
    """A json file; one-line errors naming it."""
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"Visual Genome file not found: {path} (place VG 1.2's files "
                                f"and Krause's paragraph files in {path.parent}/, vg.root; "
                                "README 'Datasets' lists them)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VgFormatError(f"{path}: not valid json ({err})") from None


def _list(path: Path, data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise VgFormatError(f"{path}: expected a json list, got {type(data).__name__}")
    return data


def _field(path: Path, where: str, entry: Any, key: str, kind: type | tuple[type, ...],
           optional: bool = False) -> Any:
    """`entry[key]` of type `kind` (ints never bools); VgFormatError naming file and field."""
    if not isinstance(entry, dict):
        raise VgFormatError(f"{path}: {where} is not an object")
    if key not in entry or (optional and entry[key] is None):
        if optional:
            return None
        raise VgFormatError(f"{path}: {where} has no '{key}'")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise VgFormatError(f"{path}: {where}.{key} is {value!r}, expected "
                            f"{getattr(kind, '__name__', 'int or float')}")
    return value


def normalize_name(name: str) -> str:
    """An object / attribute name as it is counted: lower case, single spaces."""
    return " ".join(name.lower().split())


def read_aliases(path: Path) -> dict[str, str]:
    """alias -> canonical name of an alias file (comma-separated synonyms per line, the first
    canonical); a name listed twice keeps its first canonical."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"Visual Genome file not found: {path} (place VG 1.2's "
                                f"{path.name} in {path.parent}/, vg.root)") from None
    aliases: dict[str, str] = {}
    for line in lines:
        names = [normalize_name(n) for n in line.split(",")]
        names = [n for n in names if n]
        if names:
            for name in names:
                aliases.setdefault(name, names[0])
    return aliases


def read_image_data(path: Path) -> dict[int, VgImage]:
    """image id -> its image_data.json entry."""
    images: dict[int, VgImage] = {}
    for i, entry in enumerate(_list(path, read_json(path))):
        where = f"[{i}]"
        image_id = _field(path, where, entry, "image_id", int)
        url = _field(path, where, entry, "url", str, optional=True) or ""
        folder = next((f for f in IMAGE_FOLDERS if f"/{f}/" in url), "")
        images[image_id] = VgImage(image_id, _field(path, where, entry, "width", int),
                                   _field(path, where, entry, "height", int),
                                   _field(path, where, entry, "coco_id", int, optional=True),
                                   folder)
    return images


def read_paragraphs(path: Path) -> dict[int, str]:
    """image id -> paragraph of paragraphs_v1.json (an image listed twice is an error)."""
    paragraphs: dict[int, str] = {}
    for i, entry in enumerate(_list(path, read_json(path))):
        image_id = _field(path, f"[{i}]", entry, "image_id", int)
        if image_id in paragraphs:
            raise VgFormatError(f"{path}: [{i}]: image_id {image_id} has a second paragraph")
        paragraphs[image_id] = " ".join(_field(path, f"[{i}]", entry, "paragraph", str).split())
    return paragraphs


def read_split_ids(path: Path) -> list[int]:
    """The image ids of a Krause split file (a json list of integers)."""
    ids = _list(path, read_json(path))
    bad = next((v for v in ids if isinstance(v, bool) or not isinstance(v, int)), None)
    if bad is not None:
        raise VgFormatError(f"{path}: entry {bad!r} is not an integer image id")
    return ids


def read_region_captions(path: Path, per_image: int) -> dict[int, tuple[str, ...]]:
    """image id -> its `per_image` largest region phrases (box area, then file order), each
    phrase kept once (phrases with the same words count as one); images without a phrase
    are left out."""
    captions: dict[int, tuple[str, ...]] = {}
    for i, entry in enumerate(_list(path, read_json(path))):
        image_id = _field(path, f"[{i}]", entry, "id", int)
        regions = _field(path, f"[{i}]", entry, "regions", list)
        sized = []
        for j, region in enumerate(regions):
            where = f"[{i}].regions[{j}]"
            phrase = " ".join(_field(path, where, region, "phrase", str).split())
            area = (_field(path, where, region, "width", (int, float))
                    * _field(path, where, region, "height", (int, float)))
            sized.append((-area, j, phrase))
        chosen, seen = [], set()
        for _, _, phrase in sorted(sized):
            words = tuple(tokenize(phrase))
            if words and words not in seen:
                seen.add(words)
                chosen.append(phrase)
            if len(chosen) == per_image:
                break
        if chosen:
            captions[image_id] = tuple(chosen)
    return captions


def read_objects(path: Path, aliases: Mapping[str, str], keep: Iterable[int]
                 ) -> dict[int, list[VgObject]]:
    """image id -> its objects (images of `keep` only), each named by its first name's
    canonical alias; objects without a name are skipped."""
    wanted = set(keep)
    objects: dict[int, list[VgObject]] = {}
    for i, entry in enumerate(_list(path, read_json(path))):
        image_id = _field(path, f"[{i}]", entry, "image_id", int)
        if image_id not in wanted:
            continue
        found = objects.setdefault(image_id, [])
        for j, obj in enumerate(_field(path, f"[{i}]", entry, "objects", list)):
            where = f"[{i}].objects[{j}]"
            names = _field(path, where, obj, "names", list)
            name = normalize_name(names[0]) if names and isinstance(names[0], str) else ""
            if not name:
                continue
            box = tuple(_field(path, where, obj, k, int) for k in ("x", "y", "w", "h"))
            found.append(VgObject(_field(path, where, obj, "object_id", int),
                                  aliases.get(name, name), box))  # type: ignore[arg-type]
    return objects


def read_attribute_counts(path: Path, keep: Iterable[int]) -> Counter[str]:
    """How often each attribute name is given to an object of the `keep` images."""
    wanted, counts = set(keep), Counter()
    for i, entry in enumerate(_list(path, read_json(path))):
        if _field(path, f"[{i}]", entry, "image_id", int) not in wanted:
            continue
        for j, obj in enumerate(_field(path, f"[{i}]", entry, "attributes", list)):
            values = _field(path, f"[{i}].attributes[{j}]", obj, "attributes", list,
                            optional=True) or []
            counts.update(normalize_name(v) for v in values if isinstance(v, str)
                          and normalize_name(v))
    return counts


def coco_eval_ids(path: Path) -> set[int]:
    """COCO image ids (`cocoid`) of the val and test splits of COCO's Karpathy json."""
    if not path.is_file():
        raise FileNotFoundError(f"COCO Karpathy json not found: {path} (vg.coco_karpathy_json, "
                                "the leakage guard: place dataset_coco.json there, or set "
                                "vg.coco_karpathy_json = \"\" to prepare without the guard)")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise VgFormatError(f"{path}: expected a Karpathy json with a list field 'images' "
                            "(vg.coco_karpathy_json)")
    ids = set()
    for i, entry in enumerate(data["images"]):
        if _field(path, f"images[{i}]", entry, "split", str) in ("val", "test"):
            ids.add(_field(path, f"images[{i}]", entry, "cocoid", int))
    return ids


# ----------------------------------------------------------------------------- splits


def leakage_guard(splits: dict[int, str], coco_of: Mapping[int, int | None],
                  coco_eval: set[int]) -> tuple[dict[int, str], list[int]]:
    """`splits` without the training images that are COCO val / test images, and those
    images' VG ids (sorted)."""
    leaked = sorted(i for i, split in splits.items()
                    if split == "train" and coco_of.get(i) in coco_eval)
    dropped = set(leaked)
    return {i: s for i, s in splits.items() if i not in dropped}, leaked


def paragraph_splits(root: Path, paragraphs: Mapping[int, str]) -> tuple[dict[int, str], int]:
    """image id -> Krause split of every image with a paragraph, and how many ids of the
    split files have none."""
    splits: dict[int, str] = {}
    missing = 0
    for split, name in SPLIT_FILES.items():
        for image_id in read_split_ids(root / name):
            if image_id in splits:
                raise VgFormatError(f"{root / name}: image {image_id} is also in the "
                                    f"{splits[image_id]} split")
            if image_id not in paragraphs:
                missing += 1
                continue
            splits[image_id] = split
    return splits, missing


def random_splits(image_ids: Iterable[int], n_val: int, n_test: int, seed: int
                  ) -> dict[int, str]:
    """Test, then val images drawn with `seed` from the sorted ids; the rest is train."""
    ids = sorted(image_ids)
    if n_val + n_test >= len(ids):
        raise ConfigError(f"vg.n_val={n_val} + vg.n_test={n_test} leave no training image of "
                          f"the {len(ids)} with region captions")
    order = np.random.default_rng(seed).permutation(len(ids))
    splits = {image_id: "train" for image_id in ids}
    for rank, index in enumerate(order[:n_test + n_val]):
        splits[ids[index]] = "test" if rank < n_test else "val"
    return splits


# ----------------------------------------------------------------------------- categories


def chair_categories(counts: Counter[str], aliases: Mapping[str, str], limit: int
                     ) -> list[dict[str, Any]]:
    """COCO `categories` of the `limit` most frequent canonical names that CHAIR's rules can
    match: one or two words, no word (or its Pattern singular) already naming a more
    frequent category; each with its aliases as `synonyms` (those that stay unambiguous)."""
    from evaluate.chair_text import singular  # CHAIR's own singulars decide what collides

    synonyms: dict[str, list[str]] = {}
    for alias, canonical in aliases.items():
        synonyms.setdefault(canonical, []).append(alias)
    taken: dict[str, str] = {}  # word or its singular -> the category it names
    categories: list[dict[str, Any]] = []
    for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(categories) == limit:
            break
        kept: list[str] = []
        for word in dict.fromkeys([name, *synonyms.get(name, [])]):
            parts = word.split()
            keys = {word, " ".join(singular(p) for p in parts)}
            if 1 <= len(parts) <= 2 and all(taken.get(k, name) == name for k in keys):
                kept.append(word)
                taken.update(dict.fromkeys(keys, name))
            elif word == name:
                break  # the category's own name cannot be matched unambiguously
        if kept and kept[0] == name:
            categories.append({"id": len(categories) + 1, "name": name,
                               "supercategory": "object", "synonyms": kept})
    return categories


def instances_payload(images: list[CaptionedImage], objects: Mapping[int, list[VgObject]],
                      categories: list[dict[str, Any]]) -> dict[str, Any]:
    """COCO instances json: every object of a category, boxes as VG gives them."""
    category_of = {c["name"]: c["id"] for c in categories}
    annotations = []
    for image in images:
        for obj in objects.get(image.image_id, []):
            if obj.name in category_of:
                x, y, w, h = obj.bbox
                annotations.append({"id": len(annotations) + 1, "image_id": image.image_id,
                                    "category_id": category_of[obj.name], "bbox": [x, y, w, h],
                                    "area": w * h, "iscrowd": 0, "vg_object_id": obj.object_id})
    return {"info": {"description": "Visual Genome objects (object_alias.txt applied)"},
            "licenses": [], "images": [image_entry(image) for image in images],
            "annotations": annotations, "categories": categories}


# ----------------------------------------------------------------------------- concepts


def ranked(counts: Counter[str]) -> list[list[Any]]:
    """[[name, count], ...] by count, then name."""
    return [[name, n] for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def vg_concept_words(path: str | Path, n_objects: int, n_attributes: int, min_count: int
                     ) -> list[str]:
    """FSGR's concept vocabulary from `vg.concepts_json`: the `n_objects` most frequent object
    names and the `n_attributes` most frequent attribute names seen at least `min_count`
    times in the VG training images, objects first, each word once."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VG concept counts not found: {path} (vg.concepts_json; "
                                "written by `python -m shared.datasets prepare --config vg`)")
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("objects", "attributes")):
        raise VgFormatError(f"{path}: expected {{\"objects\": [[name, count], ...], "
                            "\"attributes\": [...]}} (vg.concepts_json)")
    words: list[str] = []
    for key, limit in (("objects", n_objects), ("attributes", n_attributes)):
        frequent = [name for name, count in data[key] if count >= min_count]
        words.extend(frequent[:limit])
    words = list(dict.fromkeys(words))
    if not words:
        raise ValueError(f"{path}: no VG object or attribute name seen at least "
                         f"fsgr.concept_min_count={min_count} times")
    return words


# ----------------------------------------------------------------------------- prepare


def image_folders(root: Path, images: Mapping[int, VgImage], ids: Iterable[int]
                  ) -> dict[int, str]:
    """The folder (VG_100K or VG_100K_2) holding each image of `ids`; an error naming the
    first image found in neither."""
    present = {f: {p.name for p in (root / f).iterdir()} if (root / f).is_dir() else set()
               for f in IMAGE_FOLDERS}
    folders, missing = {}, []
    for image_id in ids:
        name = f"{image_id}.jpg"
        preferred = images[image_id].folder
        order = [preferred, *(f for f in IMAGE_FOLDERS if f != preferred)] if preferred \
            else list(IMAGE_FOLDERS)
        folder = next((f for f in order if name in present[f]), None)
        if folder is None:
            missing.append(name)
        else:
            folders[image_id] = folder
    if missing:
        raise FileNotFoundError(f"{len(missing)} Visual Genome images are in neither "
                                f"{root / IMAGE_FOLDERS[0]}/ nor {root / IMAGE_FOLDERS[1]}/ "
                                f"(first: {missing[0]}); unpack images.zip and images2.zip "
                                "there")
    return folders


def _outputs(config: Config) -> tuple[Path, Path, Path]:
    data = config.data
    if not data.captions_json or not data.instances_json:
        raise ConfigError("data.kind = \"vg\" writes one COCO caption and one instances file: "
                          "set data.captions_json and data.instances_json to one path each")
    return Path(data.karpathy_json), Path(data.captions_json[0]), Path(data.instances_json[0])


def prepare_visual_genome(config: Config) -> list[str]:
    """Convert the VG files under `vg.root` (see the module docstring); lines to print."""
    vg, root = config.vg, Path(config.vg.root)
    karpathy_json, captions_json, instances_json = _outputs(config)
    images = read_image_data(root / IMAGE_DATA)
    aliases = read_aliases(root / OBJECT_ALIAS)
    if vg.caption_source == "paragraphs":
        paragraphs = read_paragraphs(root / PARAGRAPHS)
        splits, no_paragraph = paragraph_splits(root, paragraphs)
        captions = {i: (paragraphs[i],) for i in splits}
        source = f"Krause paragraphs ({no_paragraph} split ids without a paragraph skipped)"
    else:
        captions = read_region_captions(root / REGIONS, vg.regions_per_image)
        splits = random_splits(captions, vg.n_val, vg.n_test, vg.seed)
        source = f"the {vg.regions_per_image} largest distinct region phrases per image"
    unknown = next((i for i in splits if i not in images), None)
    if unknown is not None:
        raise VgFormatError(f"{root / IMAGE_DATA}: has no entry for image {unknown}")

    lines = []
    leaked: list[int] = []
    if vg.coco_karpathy_json:
        coco_eval = coco_eval_ids(Path(vg.coco_karpathy_json))
        splits, leaked = leakage_guard(splits, {i: im.coco_id for i, im in images.items()},
                                       coco_eval)
        lines.append(f"vg: leakage guard: {len(leaked)} training images are COCO Karpathy "
                     f"val/test images ({vg.coco_karpathy_json}): left out of train")
    else:
        lines.append("vg: leakage guard off (vg.coco_karpathy_json is empty): VG training "
                     "images may be COCO val/test images")
    write_compact_json(karpathy_json.parent / LEAKAGE_NAME, {
        "coco_karpathy_json": vg.coco_karpathy_json, "excluded_from_train": len(leaked),
        "vg_image_ids": leaked,
        "coco_ids": [images[i].coco_id for i in leaked]})

    ordered = sorted(splits)
    folders = image_folders(root, images, ordered)
    records = [CaptionedImage(i, splits[i], folders[i], f"{i}.jpg", captions[i],
                              images[i].width, images[i].height,
                              {"coco_id": images[i].coco_id}) for i in ordered]
    write_caption_files(records, karpathy_json, captions_json, "vg")

    objects = read_objects(root / OBJECTS, aliases, ordered)
    train_ids = [r.image_id for r in records if r.split == "train"]
    object_counts = Counter(o.name for i in train_ids for o in objects.get(i, []))
    categories = chair_categories(object_counts, aliases, vg.object_categories)
    instances = instances_payload(records, objects, categories)
    write_compact_json(instances_json, instances)
    attribute_counts = read_attribute_counts(root / ATTRIBUTES, train_ids)
    write_compact_json(vg.concepts_json, {
        "source": f"Visual Genome training images of {karpathy_json}",
        "train_images": len(train_ids), "objects": ranked(object_counts),
        "attributes": ranked(attribute_counts)})
    lines += [f"vg: {len(records)} images ({split_counts(records)}), captions: {source} "
              f"-> {karpathy_json}, {captions_json}",
              f"vg: {len(instances['annotations'])} objects of {len(categories)} categories "
              f"-> {instances_json}",
              f"vg: {len(object_counts)} object and {len(attribute_counts)} attribute names "
              f"counted -> {vg.concepts_json}"]
    return lines
