"""MAE / Deblurring MAE on a tiny ViT, the MAE decoder and the reconstruction grid."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_vit_spec

from ultrassl.errors import ConfigError
from ultrassl.methods.mae import MAE, MAEConfig
from ultrassl.models.decoders import MAEDecoder
from ultrassl.models.masking import gather_tokens, patchify
from ultrassl.models.vit import EncoderSpec
from ultrassl.transforms.blur import gaussian_blur
from ultrassl.visualize import save_reconstruction_grid

torch.set_num_threads(1)
SPEC = tiny_vit_spec()


def tiny_cfg(**kw: object) -> MAEConfig:
    return MAEConfig(**{"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, **kw})


def make_model(cfg: MAEConfig | None = None, **kw: object) -> MAE:
    torch.manual_seed(0)
    return MAE(SPEC, cfg if cfg is not None else tiny_cfg(**kw))


def smooth_images(b: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 1, 4, 6, generator=g)
    return F.interpolate(low, size=(32, 48), mode="bicubic", align_corners=False).clamp(0, 1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_forward_outputs_and_gradients() -> None:
    model = make_model()
    x = smooth_images(4)
    out = model({"target": x}, generator=gen())
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    assert out["pred"].shape == (4, 24, 64)
    assert out["idx_keep"].shape == (4, 6) and out["idx_mask"].shape == (4, 18)
    assert out["mask"].shape == (4, 24) and out["mask"].sum(1).tolist() == [18.0] * 4
    out["loss"].backward()
    vit = model.encoder.vit
    for p in (vit.patch_embed.proj.weight, vit.blocks[0].attn.qkv.weight, vit.blocks[-1].mlp.fc2.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert model.decoder.mask_token.grad is not None
    assert vit.pos_embed.grad is None and model.decoder.decoder_pos_embed.grad is None


def test_same_seed_same_loss() -> None:
    model = make_model()
    x = smooth_images(4)
    a = model({"target": x}, generator=gen(5))["loss"]
    b = model({"target": x}, generator=gen(5))["loss"]
    c = model({"target": x}, generator=gen(6))["loss"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loss_formula_norm_pix_and_loss_on() -> None:
    x = smooth_images(4)
    for norm_pix in (True, False):
        model = make_model(norm_pix_loss=norm_pix)
        out = model({"target": x}, generator=gen(1))
        t = patchify(x, 8)
        if norm_pix:
            t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
        per_patch = ((out["pred"] - t) ** 2).mean(-1)
        expected = (per_patch * out["mask"]).sum() / out["mask"].sum()
        torch.testing.assert_close(out["loss"], expected)
        model.cfg.loss_on = "all"
        all_loss = model({"target": x}, generator=gen(1))["loss"]
        torch.testing.assert_close(all_loss, per_patch.mean())
        assert not torch.isclose(all_loss, out["loss"])


def test_blurred_input_sharp_target() -> None:
    model = make_model(MAEConfig.deblurring(decoder_dim=32, decoder_depth=1, decoder_heads=2))
    assert model.cfg.loss_on == "all" and not model.cfg.norm_pix_loss and model.cfg.mask_ratio == 0.75
    x = smooth_images(4)
    sharp = model({"target": x}, generator=gen(2))["loss"]
    blurred = model({"input": gaussian_blur(x, 1.1), "target": x}, generator=gen(2))["loss"]
    assert torch.isfinite(blurred) and not torch.equal(sharp, blurred)


def test_config_errors() -> None:
    with pytest.raises(ConfigError):
        MAEConfig(loss_on="visible")
    with pytest.raises(ConfigError):
        MAEConfig(mask_ratio=1.0)
    with pytest.raises(ConfigError):
        MAEConfig(mask_ratio=0.0)
    with pytest.raises(ConfigError):
        MAEConfig(decoder_dim=30, decoder_heads=4)
    model = make_model()
    with pytest.raises(ConfigError):
        model({"target": torch.rand(2, 3, 32, 48)})
    with pytest.raises(ConfigError):
        model({"target": torch.rand(2, 1, 32, 48), "input": torch.rand(2, 1, 32, 40)})


def test_loss_falls_on_fixed_batch() -> None:
    model = make_model(norm_pix_loss=False)
    x = smooth_images(8)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = gen(0)
    losses = []
    for _ in range(50):
        loss = model({"target": x}, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_bf16_autocast_forward() -> None:
    model = make_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model({"target": smooth_images(4)}, generator=gen())
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.encoder.vit.patch_embed.proj.weight.grad is not None


def test_no_weight_decay_names_exist() -> None:
    model = make_model()
    names = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(names)


MAE_DECODER_KEYS = (
    ["mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias"]
    + [
        f"decoder_blocks.{i}.{layer}.{wb}"
        for i in range(2)
        for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for wb in ("weight", "bias")
    ]
    + ["decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"]
)


def test_decoder_param_names_and_shapes_match_mae() -> None:
    dec = MAEDecoder((4, 6), 8, 3, embed_dim=32, decoder_dim=16, depth=2, num_heads=2)
    sd = dec.state_dict()
    assert list(sd) == MAE_DECODER_KEYS
    assert sd["mask_token"].shape == (1, 1, 16)
    assert sd["decoder_pos_embed"].shape == (1, 25, 16)
    assert sd["decoder_pred.weight"].shape == (8 * 8 * 3, 16)
    # an MAE-format flat checkpoint (encoder keys = timm's, decoder keys = ours) loads both halves
    model = make_model()
    mae_ckpt = {**model.encoder.vit.state_dict(), **model.decoder.state_dict()}
    enc_keys = set(model.encoder.vit.state_dict())
    model.encoder.vit.load_state_dict({k: v for k, v in mae_ckpt.items() if k in enc_keys})
    model.decoder.load_state_dict({k: v for k, v in mae_ckpt.items() if k not in enc_keys})


def test_decoder_unshuffle_matches_mae_gather() -> None:
    torch.manual_seed(0)
    dec = MAEDecoder((4, 6), 8, 1, embed_dim=32, decoder_dim=16, depth=1, num_heads=2).eval()
    b, n = 3, 24
    ids_shuffle = torch.argsort(torch.rand(b, n), dim=1)
    idx_keep = ids_shuffle[:, :6]
    tokens = torch.randn(b, 7, 32)
    with torch.no_grad():
        ours = dec(tokens, idx_keep, n)
        # facebookresearch/mae forward_decoder
        x = dec.decoder_embed(tokens)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask_tokens = dec.mask_token.repeat(b, n + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + dec.decoder_pos_embed
        for blk in dec.decoder_blocks:
            x = blk(x)
        ref = dec.decoder_pred(dec.decoder_norm(x))[:, 1:, :]
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        dec(tokens, idx_keep, 20)


def test_reconstruct_and_grid_png(tmp_path: Path) -> None:
    model = make_model()
    x = smooth_images(3)
    blurred = gaussian_blur(x, 1.1)
    images = model.reconstruct({"input": blurred, "target": x}, generator=gen(0))
    for key in ("input", "masked_input", "reconstruction", "prediction", "target"):
        assert images[key].shape == (3, 1, 32, 48)
    out = model({"input": blurred, "target": x}, generator=gen(0))
    visible = gather_tokens(patchify(images["reconstruction"], 8), out["idx_keep"])
    torch.testing.assert_close(visible, gather_tokens(patchify(blurred, 8), out["idx_keep"]))
    assert torch.all(gather_tokens(patchify(images["masked_input"], 8), out["idx_mask"]) == 0)
    path = save_reconstruction_grid(images, tmp_path / "grid" / "recon.png", max_rows=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = {k: v.repeat(1, 3, 1, 1) for k, v in images.items()}
    save_reconstruction_grid(rgb, tmp_path / "rgb.png", columns=("input", "prediction"))
    assert (tmp_path / "rgb.png").stat().st_size > 0


@pytest.mark.parametrize(
    "arch, patch, size, chans",
    [("small", 14, (56, 70), 3), ("vit_tiny_patch16_224", 16, (48, 64), 1), ("tiny", 8, (40, 24), 1)],
)
def test_any_timm_vit_size_patch_channels_and_non_square_input(arch, patch, size, chans):
    spec = EncoderSpec(arch, size, patch, chans)
    model = MAE(spec, MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2))
    x = torch.rand(2, chans, *size)
    out = model({"target": x}, generator=torch.Generator().manual_seed(0))
    n = (size[0] // patch) * (size[1] // patch)
    assert out["pred"].shape == (2, n, patch * patch * chans)
    assert torch.isfinite(out["loss"])
