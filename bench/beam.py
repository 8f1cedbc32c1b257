"""Benchmark: batched beam search versus the plain per-image loop, same decoder, same inputs.

The decoder is the project's `CaptionDecoder` with PMA self-attention memory (prototypes
installed), at COCO sizes by default (d 512, 3 layers, 10k words, 256 visual tokens of width
512); weights are random with the <eos> logit scaled so captions end at varied lengths. Both
searches run beam 5 / max 20 on the same images; the script reports captions/s of each, the
ratio, and how many images got identical captions (float64 run: exactly identical expected).

    .venv/bin/python -m bench.beam [--images 50] [--batch 50] [--d-model 512] [--vocab 10000]
"""

from __future__ import annotations

import argparse

import torch

from bench.common import BOS, EOS, make_parser, print_report, timed
from shared.models.caption_decoder import CaptionDecoder, DecoderDims
from shared.models.decoding import beam_search  # noqa: E402
from tests.reference_decoding import beam_search_one  # noqa: E402


def build(args: argparse.Namespace, dtype: torch.dtype) -> CaptionDecoder:
    """A random decoder with PMA memory whose captions end at varied lengths."""
    torch.manual_seed(args.seed)
    decoder = CaptionDecoder(DecoderDims(
        d_visual=args.d_visual, vocab_size=args.vocab, d_model=args.d_model,
        n_heads=args.heads, n_dec_layers=args.layers, d_ff=4 * args.d_model,
        self_memory=True)).to(dtype).eval()
    with torch.no_grad():
        decoder.head.weight[EOS] *= args.eos_scale
    decoder.set_memory_prototypes(
        [(0.3 * torch.randn(args.prototypes, args.d_model, dtype=dtype),
          0.3 * torch.randn(args.prototypes, args.d_model, dtype=dtype))
         for _ in range(args.layers)])
    return decoder


def strip(ids: list[int]) -> list[int]:
    return ids[:ids.index(EOS) + 1] if EOS in ids else ids


def run(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, float]:
    decoder = build(args, dtype)
    visual = torch.randn(args.images, args.patches, args.d_visual,
                         generator=torch.Generator().manual_seed(args.seed + 1)).to(dtype)

    def batched_search() -> list[list[int]]:
        batched = []
        for i in range(0, args.images, args.batch):
            result = beam_search(decoder, visual[i:i + args.batch], BOS, EOS, args.beam,
                                 args.max_len)
            batched += [strip(row) for row in result.best.tolist()]
        return batched

    batched, batched_s = timed(batched_search)
    single, single_s = timed(lambda: [
        beam_search_one(decoder, visual[i:i + 1], BOS, EOS, args.beam, args.max_len)[0][0]
        for i in range(args.images)])
    lengths = sorted(len(c) for c in batched)
    return {"dtype": str(dtype).removeprefix("torch."),
            "batched_captions_per_s": args.images / batched_s,
            "per_image_captions_per_s": args.images / single_s,
            "ratio": single_s / batched_s,
            "identical": sum(a == b for a, b in zip(batched, single)),
            "images": args.images, "median_length": lengths[len(lengths) // 2]}


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-visual", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--patches", type=int, default=256)
    parser.add_argument("--prototypes", type=int, default=1024)
    parser.add_argument("--eos-scale", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float64", action="store_true", help="also run in float64")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    for dtype in [torch.float32, *([torch.float64] if args.float64 else [])]:
        result = run(args, dtype)
        print_report(result, indent=None)
        print(f"{result['dtype']}: batched {result['batched_captions_per_s']:.1f} captions/s, "
              f"per-image {result['per_image_captions_per_s']:.1f} captions/s, "
              f"ratio {result['ratio']:.1f}x (target >= 5x); identical captions "
              f"{result['identical']}/{result['images']}")


if __name__ == "__main__":
    main()
