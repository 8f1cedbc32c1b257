"""`clip.decode = "gpu"` on the CPU: the tensor path (torchvision's `decode_jpeg` + the resize,
crop and normalise of `shared.gpu_decode.preprocess_tensors`, the code the GPU runs, here with
device="cpu") against the CPU path (PIL + open_clip's transform), the routing of files between
the two, the fallbacks, and `extract clip` end to end with the GPU path run on the CPU."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import extract.clip_features as clip_features
from extract.clip_features import ImageFiles, extract_clip, load_preprocessed
from shared.feature_store import FeatureStore
from shared.gpu_decode import (DRAFT_TOLERANCE_MAX, DRAFT_TOLERANCE_MEAN, RESIZE_TOLERANCE,
                               TensorPreprocess, UnsupportedPreprocess, assemble, collate_mixed,
                               decode_jpegs, jpeg_bytes, preprocess_tensors)
from shared.images import load_rgb
from shared.manifest import current_state, decide
from shared.stages import clip_stage
from tests.conftest import make_config

SIZE = 224  # ViT-L/14's input size, with open_clip's own eval transform (OpenAI mean / std)


def picture(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth colour waves with sensor-like noise: something between a photo and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    waves = [128 + 90 * np.sin(x / rng.uniform(5, 40) + c) + 40 * np.cos(y / rng.uniform(5, 40))
             for c in range(3)]
    return np.clip(np.stack(waves, -1) + rng.normal(0, 12, (height, width, 3)), 0, 255
                   ).astype(np.uint8)


def write_jpeg(path: Path, width: int, height: int, seed: int, mode: str = "RGB") -> Path:
    Image.fromarray(picture(width, height, seed)).convert(mode).save(path, "JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def transform():
    return open_clip.image_transform(SIZE, is_train=False)


def tensor_path(path: Path, spec: TensorPreprocess) -> torch.Tensor:
    (image,) = decode_jpegs([jpeg_bytes(path)], "cpu")
    return preprocess_tensors([image], spec, "cpu")[0]


# below 2x the input size on some side: PIL decodes at full scale, like nvJPEG
SMALL = [(224, 224), (300, 200), (200, 300), (400, 250), (100, 60), (1500, 300), (57, 333)]
# both sides >= 2x: PIL's draft decodes at 1/2 .. 1/8 scale (the CPU path's `load_rgb`)
LARGE = [(640, 480), (480, 640), (1024, 1024), (900, 700)]


def test_tensor_path_matches_the_pil_transform_within_two_levels(tmp_path, transform) -> None:
    spec = TensorPreprocess.from_transform(transform)
    for i, (w, h) in enumerate(SMALL):
        for mode in ("RGB", "L"):
            path = write_jpeg(tmp_path / f"{w}x{h}{mode}.jpg", w, h, i, mode)
            ref = transform(load_rgb(path, target_size=SIZE))
            got = tensor_path(path, spec)
            assert got.shape == ref.shape == (3, SIZE, SIZE)
            diff = (got - ref).abs()
            assert diff.max() <= RESIZE_TOLERANCE, (w, h, mode, float(diff.max()))
            assert diff.mean() <= RESIZE_TOLERANCE / 20, (w, h, mode, float(diff.mean()))


def test_large_jpegs_differ_by_the_draft_decode_only(tmp_path, transform) -> None:
    """Against PIL at full scale the tensor path is within the resize tolerance; against the
    CPU path's reduced-scale (draft) decode it is within the stated, larger bound: why
    `clip.decode = "gpu"` is part of the store identity."""
    spec = TensorPreprocess.from_transform(transform)
    for i, (w, h) in enumerate(LARGE):
        path = write_jpeg(tmp_path / f"{w}x{h}.jpg", w, h, 10 + i)
        got = tensor_path(path, spec)
        full = transform(load_rgb(path))  # no draft
        assert (got - full).abs().max() <= RESIZE_TOLERANCE, (w, h)
        draft = (got - transform(load_rgb(path, target_size=SIZE))).abs()
        print(f"{w}x{h}: vs draft decode mean {float(draft.mean()):.4f} "
              f"max {float(draft.max()):.3f}")
        assert draft.mean() <= DRAFT_TOLERANCE_MEAN and draft.max() <= DRAFT_TOLERANCE_MAX
        assert draft.max() > RESIZE_TOLERANCE  # really beyond the resize tolerance


def test_batches_of_mixed_sizes_equal_one_at_a_time(tmp_path, transform) -> None:
    spec = TensorPreprocess.from_transform(transform)
    paths = [write_jpeg(tmp_path / f"{i}.jpg", w, h, i)
             for i, (w, h) in enumerate([(300, 200), (120, 90), (300, 200), (90, 120)])]
    images = decode_jpegs([jpeg_bytes(p) for p in paths], "cpu")
    batch = preprocess_tensors(images, spec, "cpu")
    for i, path in enumerate(paths):
        assert torch.equal(batch[i], tensor_path(path, spec))


def test_unsupported_transforms_are_refused(transform) -> None:
    spec = TensorPreprocess.from_transform(transform)
    assert spec.size == (SIZE,) and spec.crop == (SIZE, SIZE)
    train = open_clip.image_transform(SIZE, is_train=True)
    with pytest.raises(UnsupportedPreprocess, match="use clip.decode = 'cpu'"):
        TensorPreprocess.from_transform(train)


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory) -> list[Path]:
    """One file of each kind the routing tells apart."""
    root = tmp_path_factory.mktemp("odd")
    good = write_jpeg(root / "good.jpg", 150, 100, 1)
    grey = write_jpeg(root / "grey.jpg", 80, 130, 2, "L")
    Image.fromarray(picture(90, 70, 3)).save(root / "image.png")
    Image.fromarray(picture(90, 70, 4)).convert("CMYK").save(root / "cmyk.jpg", "JPEG")
    data = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[:len(data) // 2])
    # a readable header, but lossless coding (SOF3) that neither decoder takes
    (root / "corrupt.jpg").write_bytes(data.replace(b"\xff\xc0", b"\xff\xc3", 1))
    (root / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "empty.jpg").write_bytes(b"")
    return [good, grey, root / "image.png", root / "cmyk.jpg", root / "truncated.jpg",
            root / "corrupt.jpg", root / "noise.jpg", root / "empty.jpg", root / "missing.jpg"]


def test_only_complete_rgb_or_grey_jpegs_go_to_the_gpu(odd_files) -> None:
    routed = {p.name: jpeg_bytes(p) is not None for p in odd_files}
    assert routed == {"good.jpg": True, "grey.jpg": True, "image.png": False, "cmyk.jpg": False,
                      "truncated.jpg": False, "corrupt.jpg": True, "noise.jpg": False,
                      "empty.jpg": False, "missing.jpg": False}
    assert jpeg_bytes(odd_files[0]).numpy().tobytes() == odd_files[0].read_bytes()


class _Record:
    def __init__(self, path: Path) -> None:
        self.path = path


def test_fallbacks_equal_the_cpu_path(odd_files, transform) -> None:
    """Files the workers decode (PNG, CMYK, unreadable) and JPEGs the decoder refuses
    (`corrupt.jpg`, decoded again by the fallback) come out exactly as on the CPU path, with
    the same failure reasons; JPEGs within the resize tolerance."""
    records = [_Record(p) for p in odd_files]
    cpu = ImageFiles(records, transform, SIZE)
    gpu = ImageFiles(records, transform, SIZE, jpeg_bytes_out=True)
    batch = collate_mixed([gpu[i] for i in range(len(records))])
    assert [odd_files[i].name for i in batch.jpeg_at] == ["good.jpg", "grey.jpg", "corrupt.jpg"]
    fallbacks: list[int] = []

    def fallback(row: int) -> tuple[torch.Tensor, str]:
        fallbacks.append(row)
        return load_preprocessed(records[row].path, transform, SIZE)

    images, reasons = assemble(batch, TensorPreprocess.from_transform(transform), "cpu",
                               fallback)
    assert fallbacks == [5]  # corrupt.jpg
    for i in range(len(records)):
        _, ref, reason = cpu[i]
        assert reasons[i] == reason, odd_files[i].name
        if i in (0, 1):
            assert (images[i] - ref).abs().max() <= RESIZE_TOLERANCE
        else:
            assert torch.equal(images[i], ref), odd_files[i].name
    assert [bool(r) for r in reasons] == [False, False, False, False, True, True, True, True,
                                          True]


def read_store(path: Path) -> dict[str, np.ndarray]:
    with FeatureStore.open(path) as store:
        return {n: store.read(n) for n in ("patch_tokens", "image_embed", "image_ids", "valid")}


def test_extract_clip_with_gpu_decode_run_on_the_cpu(tmp_path, image_dataset, tiny_checkpoint,
                                                    monkeypatch) -> None:
    """The fixture's JPEGs are below 2x the tiny model's 64 px (no draft), so the GPU path's
    store is the CPU path's within feature rounding; its PNGs are bit for bit the same. The
    key makes it another store; the CPU store stays up to date."""
    cpu_cfg = make_config(tmp_path / "cpu", image_dataset, tiny_checkpoint, "clip.num_workers=1")
    gpu_cfg = make_config(tmp_path / "gpu", image_dataset, tiny_checkpoint, "clip.num_workers=1",
                          'clip.decode="gpu"')
    with pytest.raises(ValueError, match="clip.decode = 'gpu' needs a CUDA device"):
        extract_clip(gpu_cfg, progress=False)
    monkeypatch.setattr(clip_features, "GPU_DECODE_DEVICES", ("cuda", "cpu"))
    cpu_run = extract_clip(cpu_cfg, progress=False)
    gpu_run = extract_clip(gpu_cfg, progress=False)
    assert gpu_run.complete and gpu_run.summary["decode"] == "gpu"
    assert "gpu decode" in gpu_run.lines[-1] and "waiting for input" in gpu_run.lines[-1]
    assert 0 <= gpu_run.summary["input_wait_seconds"] <= gpu_run.summary["seconds"]
    cpu_store, gpu_store = read_store(cpu_run.output), read_store(gpu_run.output)
    for name in ("image_ids", "valid"):
        np.testing.assert_array_equal(gpu_store[name], cpu_store[name])
    png = np.arange(40) % 3 == 0  # conftest's image_dataset: every third image is a PNG
    for name in ("patch_tokens", "image_embed"):
        np.testing.assert_array_equal(gpu_store[name][png], cpu_store[name][png])
        jpeg = gpu_store[name][~png].astype(np.float32) - cpu_store[name][~png]
        assert np.abs(jpeg).max() < 0.05, (name, float(np.abs(jpeg).max()))
    assert "clip.decode" in current_state(clip_stage(gpu_cfg), gpu_cfg)["config"]
    assert "clip.decode" not in current_state(clip_stage(cpu_cfg), cpu_cfg)["config"]
    assert decide(clip_stage(cpu_cfg), cpu_cfg).up_to_date
    moved = make_config(tmp_path / "cpu", image_dataset, tiny_checkpoint, 'clip.decode="gpu"')
    assert "config changed (clip.decode: None -> 'gpu')" in \
        decide(clip_stage(moved), moved).reason


def test_jpeg_bytes_of_an_in_memory_file_round_trip() -> None:
    buf = io.BytesIO()
    Image.fromarray(picture(40, 30, 5)).save(buf, "JPEG")
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    (image,) = decode_jpegs([data], "cpu")
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8
    assert decode_jpegs([], "cpu") == []
