"""Unit tests for the FSGR neural modules (shared/models/fsgr.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shared.models.fsgr import (CrossModalInteraction, FsgrEncoder, PatchEmbedding,
                                RelativeGeometryBias, SemanticQuantizer, SinePositionEmbedding2D,
                                supervised_contrastive_loss)

W, E, D, HEADS, D_FF, C, K = 24, 16, 32, 4, 48, 40, 8
GRIDS = [(8, 8), (16, 16), (7, 9)]


def make_encoder(seed: int = 0, top_k: int = K, **overrides) -> FsgrEncoder:
    g = torch.Generator().manual_seed(seed)
    args = dict(clip_width=W, embed_dim=E, d_model=D, n_layers=2, n_heads=HEADS, d_ff=D_FF,
                dropout=0.1, top_k=top_k, gumbel_tau=1.0,
                visual_proj=torch.randn(W, E, generator=g) / math.sqrt(W),
                concept_embeddings=torch.randn(C, E, generator=g))
    args.update(overrides)
    torch.manual_seed(seed)
    return FsgrEncoder(**args)


def make_inputs(batch: int, grid: tuple[int, int],
                seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, grid[0] * grid[1], W, generator=g),
            torch.randn(batch, E, generator=g))


def assert_in_rows(index: torch.Tensor, topk_ids: torch.Tensor) -> None:
    assert (index[:, :, None] == topk_ids[:, None, :]).any(-1).all()


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("train", [True, False])
def test_encoder_shapes_and_membership(grid: tuple[int, int], train: bool) -> None:
    enc = make_encoder().train(train)
    patches, pooled = make_inputs(3, grid)
    out = enc(patches, pooled, grid)
    p = grid[0] * grid[1]
    assert out.features.shape == (3, p, D) and out.features.dtype == torch.float32
    assert out.patch_embeddings.shape == (3, p, D)
    assert out.bridged_map.shape == (3, p, E)
    assert out.topk_ids.shape == (3, K) and out.topk_ids.dtype == torch.long
    for idx in (out.codebook_index, out.pseudo_labels):
        assert idx.shape == (3, p) and idx.dtype == torch.long
        assert_in_rows(idx, out.topk_ids)
    # hard assignment: each map row is exactly the (unit) codebook row of its index
    codebook = enc.quantizer.concept_embeddings
    torch.testing.assert_close(out.bridged_map, codebook[out.codebook_index])
    assert torch.isfinite(out.features).all()


def test_float16_inputs_and_grid_mismatch() -> None:
    enc = make_encoder().eval()
    patches, pooled = make_inputs(2, (7, 9))
    out = enc(patches.half(), pooled.half(), (7, 9))
    assert out.features.dtype == torch.float32 and torch.isfinite(out.features).all()
    with pytest.raises(ValueError):
        enc(patches, pooled, (8, 8))


def test_top_k_clamped_to_codebook_size() -> None:
    enc = make_encoder(top_k=100).eval()
    out = enc(*make_inputs(2, (8, 8)), (8, 8))
    assert out.topk_ids.shape == (2, C)


@pytest.mark.parametrize("grid", GRIDS)
def test_submodule_shapes(grid: tuple[int, int]) -> None:
    p = grid[0] * grid[1]
    patches, pooled = make_inputs(2, grid)
    emb = PatchEmbedding(W, E, D, 0.1)(patches, pooled)
    assert emb.shape == (2, p, D)
    pos = SinePositionEmbedding2D(D)(grid)
    assert pos.shape == (p, D) and pos.abs().max() <= 1.0
    assert torch.unique(pos, dim=0).shape[0] == p  # every grid cell has its own code
    bias = RelativeGeometryBias(HEADS)(grid)
    assert bias.shape == (HEADS, p, p)
    out = CrossModalInteraction(2, D, HEADS, D_FF, 0.1, E)(emb, torch.randn(2, p, E), grid)
    assert out.shape == (2, p, D)


def test_sine_position_requires_multiple_of_four() -> None:
    with pytest.raises(ValueError):
        SinePositionEmbedding2D(30)


def test_relative_geometry_bias_translation_consistent() -> None:
    rows, cols = 7, 9
    bias = RelativeGeometryBias(HEADS)((rows, cols))

    def at(q: tuple[int, int], k: tuple[int, int]) -> torch.Tensor:
        return bias[:, q[0] * cols + q[1], k[0] * cols + k[1]]

    torch.testing.assert_close(at((1, 2), (3, 5)), at((4, 0), (6, 3)), rtol=0, atol=0)
    torch.testing.assert_close(at((6, 8), (2, 1)), at((4, 7), (0, 0)), rtol=0, atol=0)
    torch.testing.assert_close(at((5, 7), (5, 7)), at((0, 0), (0, 0)), rtol=0, atol=0)
    assert not torch.equal(at((0, 0), (0, 1)), at((0, 0), (1, 0)))
    # all pairs with the same offset share one bias vector
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    r, c = r.flatten(), c.flatten()
    offset_id = (r[:, None] - r[None]) * 100 + (c[:, None] - c[None])
    flat = bias.permute(1, 2, 0).reshape(-1, HEADS)
    for oid in offset_id.flatten().unique()[::17]:
        group = flat[(offset_id.flatten() == oid)]
        assert (group == group[0]).all()


def test_straight_through_gradients() -> None:
    torch.manual_seed(0)
    enc = make_encoder().train()
    patches, pooled = make_inputs(2, (8, 8))
    out = enc(patches, pooled, (8, 8))
    out.features.square().mean().backward()
    assert enc.patch_embedding.proj.weight.grad.abs().sum() > 0

    # a loss on the bridged map alone reaches the quantizer's parameters through the
    # hard Gumbel straight-through estimator ...
    enc.zero_grad()
    target = torch.randn(2, 64, E)
    (enc(patches, pooled, (8, 8)).bridged_map * target).sum().backward()
    q = enc.quantizer
    assert q.adapter.weight.grad.abs().sum() > 0
    assert not q.logit_scale.requires_grad and q.logit_scale.grad is None  # frozen by default
    # ... and, once the zero-initialised adapter has moved, PatchEmbedding too.
    with torch.no_grad():
        q.adapter.weight.normal_(0, 0.1)
    enc.zero_grad()
    (enc(patches, pooled, (8, 8)).bridged_map * target).sum().backward()
    assert enc.patch_embedding.proj.weight.grad.abs().sum() > 0


def test_eval_is_deterministic_and_hard() -> None:
    enc = make_encoder().eval()
    patches, pooled = make_inputs(2, (7, 9))
    a, b = enc(patches, pooled, (7, 9)), enc(patches, pooled, (7, 9))
    assert torch.equal(a.features, b.features) and torch.equal(a.codebook_index, b.codebook_index)
    qa = enc.quantizer(patches, pooled, enc.patch_embedding(patches, pooled))
    # eval assignment = argmax of the logits; adapter is zero so it matches the pseudo-labels
    expected = qa.topk_ids.gather(1, qa.patch_concept_logits.argmax(-1))
    assert torch.equal(qa.codebook_index, expected)
    assert torch.equal(qa.codebook_index, qa.pseudo_labels)


def test_constructed_codebook_assigns_matching_patches() -> None:
    g = torch.Generator().manual_seed(3)
    visual_proj = torch.randn(W, E, generator=g)
    patches = torch.randn(1, 64, W, generator=g)
    codebook = F.normalize(torch.randn(C, E, generator=g), dim=-1)
    direction = F.normalize(patches @ visual_proj, dim=-1)[0]  # [P, E]
    codebook[5], codebook[17] = direction[10], direction[40]
    # patches 11..13 / 41..42 are rescaled copies of the anchors: same projected direction
    patches[0, 11:14] = patches[0, 10] * torch.tensor([0.5, 2.0, 3.0])[:, None]
    patches[0, 41:43] = patches[0, 40] * torch.tensor([0.7, 1.5])[:, None]
    pooled = (codebook[5] + codebook[17])[None]
    quant = SemanticQuantizer(D, visual_proj, codebook, top_k=K).eval()
    out = quant(patches, pooled, torch.randn(1, 64, D))
    assert {5, 17} <= set(out.topk_ids[0].tolist())
    assert (out.codebook_index[0, 10:14] == 5).all() and (out.codebook_index[0, 40:43] == 17).all()
    assert (out.pseudo_labels[0, 10:14] == 5).all() and (out.pseudo_labels[0, 40:43] == 17).all()


def test_codebook_set_later_and_state_dict_roundtrip() -> None:
    enc = make_encoder().eval()
    fresh = make_encoder(concept_embeddings=None).eval()
    with pytest.raises(RuntimeError):
        fresh(*make_inputs(1, (8, 8)), (8, 8))
    fresh.load_state_dict(enc.state_dict())
    inputs = make_inputs(2, (8, 8))
    assert torch.equal(fresh(*inputs, (8, 8)).features, enc(*inputs, (8, 8)).features)
    fresh.quantizer.set_codebook(torch.randn(7, E))
    assert fresh(*inputs, (8, 8)).topk_ids.shape == (2, 7)


def reference_supcon(feats: torch.Tensor, labels: list[int], t: float) -> float:
    f = F.normalize(feats, dim=-1).tolist()
    n, losses = len(labels), []
    for i in range(n):
        sims = [sum(a * b for a, b in zip(f[i], f[j])) / t for j in range(n)]
        denom = sum(math.exp(sims[j]) for j in range(n) if j != i)
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if pos:
            losses.append(-sum(sims[j] - math.log(denom) for j in pos) / len(pos))
    return sum(losses) / len(losses)


def test_supcon_hand_computed() -> None:
    # 4 unit points at 0, 60, 180, 270 degrees; labels (0, 0, 1, 1); T = 0.5.
    # cos: (0,1)=0.5, (0,2)=-1, (0,3)=0, (1,2)=-0.5, (1,3)=-sqrt(3)/2, (2,3)=0
    feats = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [-1.0, 0.0], [0.0, -1.0]])
    s3 = math.sqrt(3) / 2
    e = math.exp
    l0 = -(1.0 - math.log(e(1.0) + e(-2.0) + e(0.0)))
    l1 = -(1.0 - math.log(e(1.0) + e(-1.0) + e(-2 * s3)))
    l2 = -(0.0 - math.log(e(-2.0) + e(-1.0) + e(0.0)))
    l3 = -(0.0 - math.log(e(0.0) + e(-2 * s3) + e(0.0)))
    expected = (l0 + l1 + l2 + l3) / 4
    loss = supervised_contrastive_loss(feats, torch.tensor([0, 0, 1, 1]), temperature=0.5)
    assert abs(loss.item() - expected) < 1e-5
    assert abs(expected - reference_supcon(feats, [0, 0, 1, 1], 0.5)) < 1e-6


def test_supcon_ignores_anchors_without_positives() -> None:
    feats = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    labels = [0, 0, 1, 2, 1, 3]  # anchors 3 and 5 have no positive
    loss = supervised_contrastive_loss(feats, torch.tensor(labels), 0.07)
    assert abs(loss.item() - reference_supcon(feats, labels, 0.07)) < 1e-4 * abs(loss.item())
    lonely = feats.clone().requires_grad_()
    zero = supervised_contrastive_loss(lonely, torch.arange(6))
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()


def test_supcon_clustered_lower_than_shuffled() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(5).repeat_interleave(20)
    centers = torch.randn(5, 32, generator=g)
    clustered = centers[labels] + 0.1 * torch.randn(100, 32, generator=g)
    shuffled = clustered[torch.randperm(100, generator=g)]
    low, high = (supervised_contrastive_loss(x, labels) for x in (clustered, shuffled))
    assert low < high


def test_supcon_anchor_subsampling() -> None:
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(300, 8, generator=g), torch.randint(0, 10, (300,), generator=g)
    full = supervised_contrastive_loss(feats, labels)
    same = supervised_contrastive_loss(feats, labels, max_anchors=300)
    assert torch.equal(full, same)
    a = supervised_contrastive_loss(feats, labels, max_anchors=60,
                                    generator=torch.Generator().manual_seed(5))
    b = supervised_contrastive_loss(feats, labels, max_anchors=60,
                                    generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.isfinite(a) and not torch.equal(a, full)


def test_encoder_contrastive_loss_backprops() -> None:
    enc = make_encoder().train()
    out = enc(*make_inputs(2, (8, 8)), (8, 8))
    loss = enc.contrastive_loss(out, temperature=0.07, max_anchors=64,
                                generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and enc.patch_embedding.proj.weight.grad.abs().sum() > 0


def test_logit_scale_is_a_frozen_buffer_at_the_given_value() -> None:
    enc = make_encoder(logit_scale=42.0)
    q = enc.quantizer
    assert "quantizer.logit_scale" not in dict(enc.named_parameters())
    assert "quantizer.logit_scale" in dict(enc.named_buffers())
    assert "quantizer.logit_scale" in enc.state_dict()
    assert not q.logit_scale.requires_grad
    assert q.scale.item() == pytest.approx(42.0, rel=1e-6)
    # the logits are exactly scale x the cosines the scale-1 quantizer computes
    inputs = make_inputs(2, (8, 8))
    one = make_encoder(logit_scale=1.0).eval()
    emb = enc.patch_embedding.eval()(*inputs)
    torch.testing.assert_close(q.eval()(*inputs, emb).patch_concept_logits,
                               42.0 * one.quantizer(*inputs, emb).patch_concept_logits)
    assert make_encoder().quantizer.scale.item() == pytest.approx(100.0)  # OpenAI CLIP's
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="logit_scale"):
            make_encoder(logit_scale=bad)


def test_learn_logit_scale_makes_it_a_parameter() -> None:
    torch.manual_seed(0)
    enc = make_encoder(logit_scale=42.0, learn_logit_scale=True).train()
    q = enc.quantizer
    assert dict(enc.named_parameters())["quantizer.logit_scale"] is q.logit_scale
    assert q.logit_scale.item() == pytest.approx(math.log(42.0))
    with torch.no_grad():
        q.adapter.weight.normal_(0, 0.1)
    patches, pooled = make_inputs(2, (8, 8))
    (enc(patches, pooled, (8, 8)).bridged_map * torch.randn(2, 64, E)).sum().backward()
    assert q.logit_scale.grad.abs() > 0
    with torch.no_grad():  # clamped at 100, as CLIP clamps its own
        q.logit_scale.fill_(math.log(500.0))
    assert q.scale.item() == pytest.approx(100.0)


@pytest.mark.parametrize("learn", [False, True])
def test_checkpoint_with_a_logit_scale_parameter_loads(learn: bool) -> None:
    """Checkpoints written before the scale came from CLIP hold a learnable `logit_scale`
    (initialised at 1/0.07); they load into both kinds, with their own value."""
    old = make_encoder(logit_scale=1 / 0.07, learn_logit_scale=True).eval()
    with torch.no_grad():
        old.quantizer.logit_scale.add_(0.3)  # as if it had been trained
    state = old.state_dict()
    new = make_encoder(seed=5, learn_logit_scale=learn).eval()
    new.load_state_dict(state)
    assert new.quantizer.scale.item() == pytest.approx(math.exp(math.log(1 / 0.07) + 0.3))
    assert ("quantizer.logit_scale" in dict(new.named_parameters())) == learn
    inputs = make_inputs(2, (8, 8))
    a, b = old(*inputs, (8, 8)), new(*inputs, (8, 8))
    assert torch.equal(a.features, b.features) and torch.equal(a.codebook_index, b.codebook_index)
    # and a new (buffer) checkpoint loads into a learnable encoder too
    make_encoder(learn_logit_scale=not learn).load_state_dict(new.state_dict())


def test_argmax_index_and_gumbel_agreement_grow_with_the_scale() -> None:
    """`argmax_index` is the eval assignment in both modes; in training the Gumbel sample
    agrees with it far more often at CLIP's scale (100) than at 1/0.07."""
    patches, pooled = make_inputs(4, (8, 8))
    enc = make_encoder().eval()
    out = enc(patches, pooled, (8, 8))
    assert torch.equal(out.argmax_index, out.codebook_index)
    agreement = {}
    for scale in (1 / 0.07, 100.0):
        enc = make_encoder(logit_scale=scale).train()
        torch.manual_seed(0)
        q = enc.quantizer(patches, pooled, enc.patch_embedding(patches, pooled))
        expected = q.topk_ids.gather(1, q.patch_concept_logits.argmax(-1))
        assert torch.equal(q.argmax_index, expected)
        agreement[scale] = (q.codebook_index == q.argmax_index).float().mean().item()
    assert agreement[100.0] > agreement[1 / 0.07] + 0.2, agreement
