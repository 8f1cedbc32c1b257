"""`clip.patch_attention`: SCLIP's correlative self-attention (CSA) for the last block's patch
tokens, checked against a plain per-head computation on small real open_clip ViTs (CPU)."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import LayerScale, Transformer, VisionTransformer

from shared.clip_model import (ClipBundle, check_csa_supported, correlative_attention,
                               create_clip, encode_images)
from shared.config import ConfigError, load_config
from shared.manifest import current_state
from shared.stages import clip_stage
from tests.conftest import DEMO_CONFIG, TINY_MODEL, make_config


class _Holder(torch.nn.Module):
    """Just enough of a CLIP model for `encode_images`: a `.visual` tower."""

    def __init__(self, visual: torch.nn.Module) -> None:
        super().__init__()
        self.visual = visual


def tiny_vit(pool_type: str = "tok", ls_init_value: float | None = None,
             batch_first: bool = True, seed: int = 0, **kwargs) -> VisionTransformer:
    """A small ViT like the demo's (32 px, 8 px patches -> 4x4 grid, width 64, 2 heads)."""
    torch.manual_seed(seed)
    visual = VisionTransformer(image_size=32, patch_size=8, width=64, layers=3, heads=2,
                               mlp_ratio=2.0, ls_init_value=ls_init_value, output_dim=48,
                               pool_type=pool_type, **kwargs)
    if ls_init_value is not None:  # random per-channel scales, so that LayerScale matters
        for module in visual.modules():
            if isinstance(module, LayerScale):
                module.gamma.data.uniform_(0.3, 1.5)
    if not batch_first:  # same weights, transformer run sequence-first (L, N, D)
        seq_first = Transformer(64, 3, 2, mlp_ratio=2.0, ls_init_value=ls_init_value,
                                batch_first=False)
        seq_first.load_state_dict(visual.transformer.state_dict())
        visual.transformer = seq_first
    return visual.eval()


def bundle_of(visual: torch.nn.Module, patch_attention: str) -> ClipBundle:
    return ClipBundle("test-vit", _Holder(visual), lambda x: x, lambda x: x, patch_attention)


def images(n: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reference(visual: VisionTransformer, pixels: torch.Tensor, correlative: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(last block output before ln_post [B, L, D], patch tokens [B, P, D]) written out by hand:
    embeddings, the first blocks as they are, then the last block with per-head attention
    softmax(s q k^T) v (standard) or (softmax(s q q^T) + softmax(s k k^T)) v (CSA), out_proj,
    residual, FFN; ln_post; class token dropped."""
    batch = pixels.shape[0]
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(batch, 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        if visual.transformer.batch_first:
            x = block(x)
        else:
            x = block(x.transpose(0, 1)).transpose(0, 1)
    block = blocks[-1]
    attn = block.attn
    width, heads = x.shape[-1], attn.num_heads
    head_dim = width // heads
    h = block.ln_1(x)
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = h @ w[:width].T + b[:width]
    k = h @ w[width:2 * width].T + b[width:2 * width]
    v = h @ w[2 * width:].T + b[2 * width:]
    outs = []
    for i in range(heads):
        part = slice(i * head_dim, (i + 1) * head_dim)
        qi, ki, vi = q[..., part], k[..., part], v[..., part]
        if correlative:
            weights = (torch.softmax(qi @ qi.transpose(1, 2) / math.sqrt(head_dim), dim=-1)
                       + torch.softmax(ki @ ki.transpose(1, 2) / math.sqrt(head_dim), dim=-1))
        else:
            weights = torch.softmax(qi @ ki.transpose(1, 2) / math.sqrt(head_dim), dim=-1)
        outs.append(weights @ vi)
    out = torch.cat(outs, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, visual.ln_post(x)[:, 1:]


VARIANTS = {"tok": {}, "avg": {"pool_type": "avg"},
            "layerscale": {"ls_init_value": 0.5},
            "seq_first": {"batch_first": False, "pool_type": "avg"}}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_standard_tokens_are_todays_and_the_reference_is_right(variant) -> None:
    visual, pixels = tiny_vit(**VARIANTS[variant]), images()
    pooled, tokens = encode_images(bundle_of(visual, "standard"), pixels)
    with torch.no_grad():
        visual.output_tokens = True
        today_pooled, today_tokens = visual(pixels)
        visual.output_tokens = False
    assert torch.equal(pooled, today_pooled) and torch.equal(tokens, today_tokens)
    # the hand-written reference reproduces open_clip's standard tokens, so it can judge CSA
    _, ref_tokens = reference(visual, pixels, correlative=False)
    torch.testing.assert_close(tokens, ref_tokens, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_csa_tokens_equal_reference_and_pooled_is_unchanged(variant) -> None:
    visual, pixels = tiny_vit(**VARIANTS[variant]), images()
    std_pooled, std_tokens = encode_images(bundle_of(visual, "standard"), pixels)
    pooled, tokens = encode_images(bundle_of(visual, "csa"), pixels)
    _, ref_tokens = reference(visual, pixels, correlative=True)
    torch.testing.assert_close(tokens, ref_tokens, rtol=1e-5, atol=1e-5)
    assert torch.equal(pooled, std_pooled)  # global embedding: the standard forward, bit for bit
    assert tokens.shape == std_tokens.shape == (3, 16, 64)
    assert not torch.allclose(tokens, std_tokens, atol=1e-3)  # CSA really changed them
    assert visual.output_tokens is False  # the tower is left as it was found


def test_csa_follows_final_ln_after_pool() -> None:
    """Token post-processing mirrors open_clip: with final_ln_after_pool, tokens skip ln_post."""
    visual, pixels = tiny_vit(pool_type="avg", final_ln_after_pool=True), images()
    std_pooled, std_tokens = encode_images(bundle_of(visual, "standard"), pixels)
    pooled, tokens = encode_images(bundle_of(visual, "csa"), pixels)
    last, _ = reference(visual, pixels, correlative=True)
    torch.testing.assert_close(tokens, last[:, 1:], rtol=1e-5, atol=1e-5)
    assert torch.equal(pooled, std_pooled)


def test_demo_tiny_clip_through_create_clip() -> None:
    """The demo's avg-pooled model (the shipped config) through the factory: grid, shapes,
    pooled embedding unchanged; tokens are the hand-computed CSA tokens."""
    torch.manual_seed(0)
    standard = create_clip(TINY_MODEL, "random")
    assert standard.patch_attention == "standard"
    assert standard.model.visual.pool_type == "avg"
    csa = ClipBundle(standard.name, standard.model, standard.preprocess, standard.tokenizer,
                     "csa")
    check_csa_supported(csa.model.visual, TINY_MODEL)
    size = standard.image_size
    pixels = images(2, size)
    std_pooled, std_tokens = encode_images(standard, pixels)
    pooled, tokens = encode_images(csa, pixels)
    assert csa.grid_size == standard.grid_size == (8, 8)
    assert tokens.shape == std_tokens.shape == (2, csa.n_patches, csa.width)
    assert torch.equal(pooled, std_pooled)
    _, ref_tokens = reference(csa.model.visual, pixels, correlative=True)
    torch.testing.assert_close(tokens, ref_tokens, rtol=1e-5, atol=1e-5)
    # avg pooling: the pooled embedding is the mean of the *standard* tokens, projected
    torch.testing.assert_close(std_pooled, std_tokens.mean(1) @ csa.model.visual.proj)
    assert create_clip(TINY_MODEL, "random", patch_attention="csa").patch_attention == "csa"


def test_vit_l_14_is_supported() -> None:
    """The COCO config's model passes the checks (structure only: built on the meta device)."""
    cfg = open_clip.get_model_config("ViT-L-14")["vision_cfg"]
    with torch.device("meta"):
        visual = VisionTransformer(image_size=cfg["image_size"], patch_size=cfg["patch_size"],
                                   width=cfg["width"], layers=cfg["layers"],
                                   heads=cfg["width"] // cfg.get("head_width", 64),
                                   mlp_ratio=cfg.get("mlp_ratio", 4.0), output_dim=768)
    check_csa_supported(visual, "ViT-L-14")


def test_unsupported_towers_and_values_are_refused() -> None:
    with pytest.raises(ValueError, match="attentional pooler"):
        check_csa_supported(tiny_vit(attentional_pool=True, attn_pooler_queries=4,
                                     attn_pooler_heads=2))
    with pytest.raises(ValueError, match="standard attention blocks"):
        check_csa_supported(tiny_vit(qk_norm=True))
    with pytest.raises(ValueError, match="clip.patch_attention must be one of"):
        create_clip(TINY_MODEL, "random", patch_attention="correlative")
    with pytest.raises(ConfigError, match="patch_attention"):
        load_config(DEMO_CONFIG, ['clip.patch_attention="sclip"'])
    assert load_config(DEMO_CONFIG, []).clip.patch_attention == "standard"


def test_stage_identity_changes_with_the_key(tmp_path, image_dataset, tiny_checkpoint) -> None:
    standard = make_config(tmp_path, image_dataset, tiny_checkpoint)
    csa = make_config(tmp_path, image_dataset, tiny_checkpoint, 'clip.patch_attention="csa"')
    before = current_state(clip_stage(standard), standard)
    after = current_state(clip_stage(csa), csa)
    assert before["config"]["clip.patch_attention"] == "standard"
    assert after["config"]["clip.patch_attention"] == "csa"
    assert before["identity"] != after["identity"]
    assert clip_stage(standard).output == clip_stage(csa).output  # same store, rebuilt


def test_correlative_attention_on_one_layer() -> None:
    """q attends q and k attends k with the block's 1/sqrt(head_dim); maps added, not averaged."""
    attn = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = correlative_attention(attn, x)
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
        # one head of width 4 each: heads 0 and 1
        expected = []
        for part in (slice(0, 4), slice(4, 8)):
            a = (torch.softmax(q[..., part] @ q[..., part].mT / 2.0, -1)
                 + torch.softmax(k[..., part] @ k[..., part].mT / 2.0, -1))
            expected.append(a @ v[..., part])
        expected = attn.out_proj(torch.cat(expected, -1))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # each row of the summed maps adds to 2 (not renormalised), so a constant v passes doubled
    attn.in_proj_bias.data.zero_()
    attn.in_proj_weight.data[16:] = 0
    attn.in_proj_bias.data[16:] = 1.0
    with torch.no_grad():
        doubled = correlative_attention(attn, x)
    torch.testing.assert_close(doubled, attn.out_proj(torch.full((1, 5, 8), 2.0)))
