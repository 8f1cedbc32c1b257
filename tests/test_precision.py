"""Decisions in full precision: under bf16 autocast (`train.precision = "bf16"`) beam search,
greedy decoding, FSGR concept selection / pseudo-labels and the SupCon loss give fp32's results.

The caption tests use a small decoder trained here on a synthetic task whose two caption
templates are equally likely at some images, so the batch holds close calls (top hypotheses a
few hundredths of a nat apart) that bf16 numbers do not resolve. The FSGR tests use a codebook
whose cosines to the image are 1e-4 apart, below bf16's resolution.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shared.devices import autocast
from shared.models.caption_decoder import CaptionDecoder, DecoderDims, caption_loss
from shared.models.decoding import beam_search
from shared.models.fsgr import FsgrEncoder, supervised_contrastive_loss

CPU = torch.device("cpu")


def bf16():
    """The project's autocast context for `train.precision = "bf16"` on CPU."""
    return autocast(CPU, "bf16")


# -- a small trained caption decoder -----------------------------------------------------------

PAD, BOS, EOS = 0, 1, 2
COLOURS, SHAPES, PLACES = ["red", "blue", "green", "pink"], ["circle", "square", "star"], \
    ["left", "right", "top"]
WORDS = ["<pad>", "<bos>", "<eos>", "a", "the", "on", "is", *COLOURS, *SHAPES, *PLACES]
ID = {w: i for i, w in enumerate(WORDS)}
D_VISUAL = 16


def scenes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Visual tokens [n, 4, D] (colour, shape, place, a scalar `u`), attributes [n, 3], u [n]."""
    table = torch.randn(3, 4, D_VISUAL, generator=torch.Generator().manual_seed(7))
    direction = F.normalize(torch.randn(D_VISUAL, generator=torch.Generator().manual_seed(8)),
                            dim=0)
    attrs = torch.stack([torch.randint(len(v), (n,), generator=generator)
                         for v in (COLOURS, SHAPES, PLACES)], dim=1)
    u = torch.randn(n, generator=generator)
    visual = 0.3 * torch.randn(n, 4, D_VISUAL, generator=generator)
    for j in range(3):
        visual[:, j] += table[j][attrs[:, j]]
    visual[:, 3] += 2.0 * u[:, None] * direction
    return visual, attrs, u


def captions(attrs: torch.Tensor, u: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """<bos> caption <eos> <pad>.. [n, L]: template "a C S on the P" with probability
    sigmoid(u), else "the S on the P is C", so images with u near 0 are near-ties."""
    first = torch.rand(len(u), generator=generator) < torch.sigmoid(u)
    rows = []
    for (c, s, p), one in zip(attrs.tolist(), first.tolist()):
        c, s, p = COLOURS[c], SHAPES[s], PLACES[p]
        words = ["a", c, s, "on", "the", p] if one else ["the", s, "on", "the", p, "is", c]
        rows.append([BOS, *(ID[w] for w in words), EOS])
    length = max(map(len, rows))
    return torch.tensor([r + [PAD] * (length - len(r)) for r in rows])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """With matrices this small more threads only wait on each other (10x slower on a busy
    machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_decoder() -> CaptionDecoder:
    """A decoder trained in fp32 for a few hundred steps (a few seconds)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    decoder = CaptionDecoder(DecoderDims(d_visual=D_VISUAL, vocab_size=len(WORDS), d_model=32,
                                         n_heads=4, n_enc_layers=1, n_dec_layers=2, d_ff=64,
                                         dropout=0.1, max_len=12))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    for _ in range(250):
        visual, attrs, u = scenes(64, generator)
        tokens = captions(attrs, u, generator)
        loss = caption_loss(decoder(visual, tokens[:, :-1]), tokens[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # the template choice's entropy alone is 0.08 nats per word (the trained decoder: ~0.083)
    assert loss.item() < 0.15, f"decoder did not learn the task (loss {loss.item():.3f})"
    return decoder.eval()


@pytest.fixture(scope="module")
def test_scenes() -> torch.Tensor:
    return scenes(1024, torch.Generator().manual_seed(1))[0]


def test_autocast_really_runs_the_decoder_in_bf16(trained_decoder, test_scenes) -> None:
    """Guard against a vacuous pass: under the bf16 context the decoder's layers do run in
    bf16 (teacher-forced logits move), only its head stays float32."""
    tokens = beam_search(trained_decoder, test_scenes[:32], BOS, EOS, 3, 10).best
    inputs = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        full = trained_decoder(test_scenes[:32], inputs)
        with bf16():
            mixed = trained_decoder(test_scenes[:32], inputs)
            hidden = trained_decoder.layers[0].ffn(torch.zeros(1, 32))
    assert hidden.dtype == torch.bfloat16
    assert full.dtype == mixed.dtype == torch.float32
    assert (full - mixed).abs().max() > 1e-3


def test_beam_search_bf16_equals_fp32(trained_decoder, test_scenes) -> None:
    """Every hypothesis and score identical. (Measured on this batch: with the searches under
    bf16 as before, 7 of the 1024 best captions differed and 32 images had some beam differ;
    with only the head in float32, still 1 and 6.)"""
    full = beam_search(trained_decoder, test_scenes, BOS, EOS, beam_size=3, max_len=10)
    with bf16():
        mixed = beam_search(trained_decoder, test_scenes, BOS, EOS, beam_size=3, max_len=10)
    # the batch holds close calls bf16 cannot resolve (bf16 spacing at |logit| ~ 8 is 0.03)
    margins = full.log_probs[:, 0] - full.log_probs[:, 1]
    assert (margins < 0.03).sum() >= 2, f"no close calls in the batch: {margins.min():.3g}"
    assert torch.equal(mixed.tokens, full.tokens)  # every hypothesis of every image
    assert full.log_probs.dtype == mixed.log_probs.dtype
    assert mixed.log_probs.dtype in (torch.float32, torch.float64)
    assert torch.equal(mixed.log_probs, full.log_probs)
    # and the captions are the task's
    words = [WORDS[w] for w in full.best[0].tolist()]
    assert words[0] in ("a", "the") and "<eos>" in words


def test_greedy_bf16_logits_are_float32_and_captions_equal(trained_decoder, test_scenes) -> None:
    full = trained_decoder.greedy(test_scenes, BOS, EOS, max_len=10)
    dtypes = []
    step = trained_decoder.step

    def spy(words, state):
        logits = step(words, state)
        dtypes.append(logits.dtype)
        return logits

    trained_decoder.step = spy
    try:
        with bf16():
            mixed = trained_decoder.greedy(test_scenes, BOS, EOS, max_len=10)
    finally:
        del trained_decoder.step
    assert dtypes and set(dtypes) == {torch.float32}
    assert torch.equal(mixed, full)


def test_step_and_decode_logits_are_float32_under_autocast(trained_decoder, test_scenes) -> None:
    """Outside the searches too (SCST sampling, teacher forcing): the head is float32."""
    with torch.no_grad(), bf16():
        state = trained_decoder.start_decoding(*trained_decoder.encode(test_scenes[:4]))
        logits = trained_decoder.step(torch.full((4,), BOS), state)
        teacher = trained_decoder(test_scenes[:4], torch.full((4, 3), BOS))
    assert logits.dtype == teacher.dtype == torch.float32


def test_fp64_decoder_stays_fp64(test_scenes) -> None:
    decoder = CaptionDecoder(DecoderDims(d_visual=D_VISUAL, vocab_size=len(WORDS), d_model=16,
                                         n_heads=2, n_dec_layers=1, d_ff=32)).double().eval()
    with torch.no_grad():
        logits = decoder(test_scenes[:2].double(), torch.full((2, 2), BOS))
    assert logits.dtype == torch.float64


# -- FSGR: concept top-k, pseudo-labels, quantiser logits -------------------------------------

W, E, D, C, K = 24, 16, 32, 40, 8


def near_tie_encoder() -> tuple[FsgrEncoder, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An FSGR encoder whose concepts' cosines to the image are 1e-4 apart around 0.5, with
    patches whose CLIP directions are the image's, slightly turned; returns the encoder,
    patch tokens [2, 16, W], image embeddings [2, E] and the fp32 top-k order expected."""
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(E, generator=g), dim=0)
    cosines = 0.5 + 1e-4 * torch.randperm(C, generator=g).double()
    other = torch.randn(C, E, generator=g).double()
    other = F.normalize(other - (other @ image.double())[:, None] * image.double(), dim=-1)
    codebook = (cosines[:, None] * image.double() + (1 - cosines[:, None] ** 2).sqrt() * other)
    visual_proj = torch.cat([torch.eye(E), torch.zeros(W - E, E)])  # CLIP space = first E dims
    torch.manual_seed(0)
    encoder = FsgrEncoder(clip_width=W, embed_dim=E, d_model=D, n_layers=1, n_heads=4, d_ff=48,
                          dropout=0.1, top_k=K, gumbel_tau=1.0, visual_proj=visual_proj,
                          concept_embeddings=codebook.float())
    turn = F.normalize(torch.randn(2, 16, E, generator=g), dim=-1)
    directions = F.normalize(image + 2e-3 * turn, dim=-1)
    scale = 1 + 3 * torch.rand(2, 16, 1, generator=g)
    patches = torch.cat([scale * directions, torch.randn(2, 16, W - E, generator=g)], dim=-1)
    expected = cosines.topk(K).indices
    return encoder.eval(), patches, image.expand(2, E) * 3.0, expected


def test_near_tie_codebook_is_beyond_bf16() -> None:
    """Guard against a vacuous pass: plain bf16 matmuls get neither this top-k nor the
    patches' pseudo-labels right."""
    encoder, patches, image, expected = near_tie_encoder()
    codebook = encoder.quantizer.concept_embeddings
    concept_k = codebook[expected]
    patch_proj = patches @ encoder.quantizer.visual_proj
    exact = torch.einsum("bpe,ke->bpk", F.normalize(patch_proj, dim=-1), concept_k)
    with bf16():
        sloppy_image = F.normalize(image, dim=-1) @ codebook.T
        sloppy_patches = torch.einsum("bpe,ke->bpk", F.normalize(
            patches @ encoder.quantizer.visual_proj, dim=-1), concept_k)
    assert sloppy_image.dtype == sloppy_patches.dtype == torch.bfloat16
    assert not torch.equal(sloppy_image.float().topk(K, dim=-1).indices[0], expected)
    assert (sloppy_patches.float().argmax(-1) != exact.argmax(-1)).sum() >= 4


@pytest.mark.parametrize("train", [False, True])
def test_quantizer_under_bf16_selects_as_fp32(train: bool) -> None:
    encoder, patches, image, expected = near_tie_encoder()
    encoder.train(train)
    runs = []
    for context in (autocast(CPU, "fp32"), bf16()):
        torch.manual_seed(3)  # same dropout / Gumbel noise in both runs
        with context:
            embedded = encoder.patch_embedding(patches, image)
            quantized = encoder.quantizer(patches, image, embedded)
        runs.append((embedded, quantized))
    (_, full), (embedded_mixed, mixed) = runs
    assert embedded_mixed.dtype == torch.bfloat16  # the layers around it do run in bf16
    assert torch.equal(full.topk_ids, expected.expand(2, K))
    assert torch.equal(mixed.topk_ids, full.topk_ids)
    assert full.pseudo_labels.unique().numel() > 1  # the patches do not all agree
    assert torch.equal(mixed.pseudo_labels, full.pseudo_labels)
    assert mixed.patch_concept_logits.dtype == mixed.bridged_map.dtype == torch.float32
    # zero-initialised adapter: the assignment logits are CLIP's cosines, as in fp32 mode
    torch.testing.assert_close(mixed.patch_concept_logits, full.patch_concept_logits,
                               rtol=0, atol=1e-5)
    if not train:
        assert torch.equal(mixed.codebook_index, full.codebook_index)
    codebook = encoder.quantizer.concept_embeddings
    torch.testing.assert_close(mixed.bridged_map, codebook[mixed.codebook_index])


def test_quantizer_logits_float32_with_trained_adapter() -> None:
    encoder, patches, image, _ = near_tie_encoder()
    with torch.no_grad():
        encoder.quantizer.adapter.weight.normal_(0, 0.1)
        encoder.quantizer.adapter.bias.normal_(0, 0.1)
    with bf16():
        out = encoder(patches, image, (4, 4))
        embedded = encoder.patch_embedding(patches, image)
        quantized = encoder.quantizer(patches, image, embedded)
    full = encoder(patches, image, (4, 4))
    assert quantized.patch_concept_logits.dtype == torch.float32
    assert torch.equal(out.topk_ids, full.topk_ids)
    assert torch.equal(out.pseudo_labels, full.pseudo_labels)


# -- supervised contrastive loss ----------------------------------------------------------------

@pytest.mark.parametrize("feature_dtype", [torch.float32, torch.bfloat16])
def test_supcon_under_bf16_is_float32_and_matches_fp32(feature_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    # features close together: their cosines differ in the third decimal, where bf16 rounds
    base = torch.randn(1, 32, generator=g)
    features = (base + 0.05 * torch.randn(96, 32, generator=g)).to(feature_dtype)
    labels = torch.randint(6, (96,), generator=g)
    full = supervised_contrastive_loss(features, labels)
    leaf = features.clone().requires_grad_(True)
    unit = F.normalize(features.float(), dim=-1)
    with bf16():
        mixed = supervised_contrastive_loss(leaf, labels)
        sloppy = unit @ unit.T  # what the similarity matrix was without the fp32 matmul
    assert mixed.dtype == full.dtype == torch.float32
    torch.testing.assert_close(mixed, full, rtol=1e-6, atol=1e-6)
    mixed.backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    # guard: in bf16 the logits (similarity / 0.07) would be off by far more than that
    assert sloppy.dtype == torch.bfloat16
    assert ((sloppy.float() - unit @ unit.T) / 0.07).abs().max() > 1e-2


def test_supcon_fp32_unchanged() -> None:
    """fp32 mode: the same number as the textbook formula."""
    g = torch.Generator().manual_seed(1)
    features, labels = torch.randn(20, 8, generator=g), torch.randint(3, (20,), generator=g)
    feats = F.normalize(features, dim=-1)
    logits = feats @ feats.T / 0.07
    eye = torch.eye(20, dtype=torch.bool)
    log_prob = logits - logits.masked_fill(eye, -math.inf).logsumexp(-1, keepdim=True)
    positives = (labels[:, None] == labels[None]) & ~eye
    valid = positives.sum(-1) > 0
    expected = -(torch.where(positives, log_prob, 0.0).sum(-1)[valid]
                 / positives.sum(-1)[valid]).mean()
    torch.testing.assert_close(supervised_contrastive_loss(features, labels), expected)
