"""MaskedViTEncoder: a thin wrapper whose unmasked output is timm's forward_features."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_vit_spec

from ultrassl.errors import ConfigError
from ultrassl.models.masked_vit import MaskedViTEncoder
from ultrassl.models.masking import random_token_mask
from ultrassl.models.pos_embed import get_2d_sincos_pos_embed
from ultrassl.models.vit import EncoderSpec, create_encoder

torch.set_num_threads(1)
SPEC = tiny_vit_spec()


@pytest.fixture
def encoder() -> MaskedViTEncoder:
    torch.manual_seed(0)
    return MaskedViTEncoder(create_encoder(SPEC)).eval()


def test_unmasked_equals_timm_forward_features(encoder: MaskedViTEncoder) -> None:
    x = torch.rand(3, 1, 32, 48)
    with torch.no_grad():
        ours = encoder(x)
        ref = encoder.vit.forward_features(x)
    assert ours.shape == (3, 1 + 24, 32)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_grad_checkpointing_gives_same_output(encoder: MaskedViTEncoder) -> None:
    x = torch.rand(2, 1, 32, 48)
    idx_keep, _ = random_token_mask(2, 24, 0.75, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = encoder(x, idx_keep)
        encoder.vit.set_grad_checkpointing(True)
        out = encoder(x, idx_keep)
    torch.testing.assert_close(out, ref)


def test_masked_forward_shape_and_token_equivariance(encoder: MaskedViTEncoder) -> None:
    x = torch.rand(2, 1, 32, 48)
    idx_keep, _ = random_token_mask(2, 24, 0.75, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = encoder(x, idx_keep)
        out_rev = encoder(x, idx_keep.flip(1))
    assert out.shape == (2, 1 + 6, 32)
    # attention is permutation-equivariant: order of kept tokens only permutes the outputs
    torch.testing.assert_close(out_rev[:, 1:], out[:, 1:].flip(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out_rev[:, 0], out[:, 0], atol=1e-5, rtol=0)


def test_pos_embed_fixed_and_no_grad(encoder: MaskedViTEncoder) -> None:
    assert not encoder.vit.pos_embed.requires_grad
    torch.testing.assert_close(
        encoder.vit.pos_embed.data, get_2d_sincos_pos_embed(32, (4, 6), cls_token=True)
    )
    encoder.train()
    idx_keep, _ = random_token_mask(2, 24, 0.5)
    encoder(torch.rand(2, 1, 32, 48), idx_keep).sum().backward()
    assert encoder.vit.pos_embed.grad is None
    assert encoder.vit.patch_embed.proj.weight.grad is not None
    assert encoder.vit.cls_token.grad is not None


def test_state_dict_is_timm(encoder: MaskedViTEncoder) -> None:
    keys = list(encoder.state_dict())
    assert all(k.startswith("vit.") for k in keys)
    fresh = create_encoder(SPEC)
    fresh.load_state_dict(encoder.vit.state_dict(), strict=True)
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(fresh.forward_features(x), encoder(x))


def test_properties(encoder: MaskedViTEncoder) -> None:
    assert (encoder.patch_size, encoder.grid_size, encoder.num_patches) == (8, (4, 6), 24)
    assert (encoder.embed_dim, encoder.in_chans) == (32, 1)


def test_rejects_vit_without_cls_token() -> None:
    spec = EncoderSpec(
        "tiny", (32, 48), 8, 1, dict(embed_dim=32, depth=1, num_heads=2, class_token=False, global_pool="avg")
    )
    with pytest.raises(ConfigError):
        MaskedViTEncoder(create_encoder(spec))
