"""ConvMAE and Deblurring ConvMAE: the masked convolution leaks nothing, the stages have the right
shapes on non-square grayscale input, the loss falls, reference checkpoints give the reference's
features, the export loads in plain timm, and the three downstream uses (classify, both seg heads) run."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_convvit_spec

from ultrassl import checkpoint as ckpt
from ultrassl.finetune.backbones import classification_model, load_backbone, trainable_tail, with_image_size
from ultrassl.finetune.classify import ClassifyConfig, finetune_classify
from ultrassl.finetune.evaluate import evaluate
from ultrassl.finetune.segment import SegmentConfig, finetune_segment
from ultrassl.methods import build_pretrain_config, get_method
from ultrassl.methods.convmae import ConvMAE
from ultrassl.methods.mae import MAEConfig
from ultrassl.models.convvit import ConvViT, upsample_keep
from ultrassl.models.seg_heads import SegModel, build_seg_head
from ultrassl.models.vit import create_encoder

TINY_MAE = MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2)


def _model(img_size=(64, 96), in_chans=1, cfg: MAEConfig = TINY_MAE, seed: int = 0) -> ConvMAE:
    torch.manual_seed(seed)
    return ConvMAE(tiny_convvit_spec(img_size, in_chans), cfg)


def _perturb_norms_(module: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial LayerNorm affine values, so a test that compares two forwards sees every norm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


# ----------------------------------------------------------------------------------------------------
# the architecture


@pytest.mark.parametrize("skip_masked", [False, True], ids=["dense", "visible-only"])
def test_masked_pixels_never_reach_the_visible_tokens(skip_masked):
    model = _model().eval()
    enc = model.encoder
    enc.skip_masked = skip_masked
    n, (gh, gw) = enc.num_patches, enc.grid_size
    idx_keep = torch.tensor([[0, 5, 7, 13, 22, 23]])
    mask = torch.ones(1, n)
    mask[0, idx_keep[0]] = 0
    x = torch.randn(1, 1, 64, 96)
    pixel_mask = upsample_keep(mask, (gh, gw), 16) < 0.5  # True on masked pixels
    changed = torch.where(pixel_mask, torch.randn_like(x) * 5, x)
    with torch.no_grad():
        a, b = enc(x, idx_keep), enc(changed, idx_keep)
        assert a.shape == (1, 6, enc.embed_dim)
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
        # the test has teeth: without the mask, the 5x5 depthwise conv carries masked pixels across
        dense_a, dense_b = enc.vit.stage1(x), enc.vit.stage1(changed)
        keep1 = upsample_keep(mask, (gh, gw), 4).bool().expand_as(dense_a)
        assert not torch.allclose(dense_a[keep1], dense_b[keep1], atol=1e-3)


def test_visible_only_stages_give_the_dense_loss_and_gradients():
    """Skipping the masked patches in stages 1-2 changes the cost, not the function (to rounding)."""
    model = _model((64, 96), cfg=MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2))
    _perturb_norms_(model)
    x = torch.randn(4, 1, 64, 96)
    got = {}
    for skip in (False, True):
        model.encoder.skip_masked = skip
        model.zero_grad()
        out = model({"target": x, "input": x.flip(-1)}, generator=torch.Generator().manual_seed(5))
        out["loss"].backward()
        got[skip] = (
            out["loss"].detach(),
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        )
    assert torch.allclose(got[True][0], got[False][0], rtol=1e-5, atol=0)
    assert set(got[True][1]) == set(got[False][1])
    for name, dense in got[False][1].items():
        assert torch.allclose(got[True][1][name], dense, rtol=1e-4, atol=1e-6 * dense.abs().max().item()), (
            name
        )


def test_the_mask_is_the_same_16px_patch_at_every_scale():
    mask = torch.zeros(1, 6)
    mask[0, 4] = 1  # row 1, col 1 of a 2 x 3 grid
    keep4 = upsample_keep(mask, (2, 3), 4)[0, 0]
    assert keep4.shape == (8, 12)
    assert keep4[4:8, 4:8].eq(0).all() and keep4.sum() == 8 * 12 - 16
    keep2 = upsample_keep(mask, (2, 3), 2)[0, 0]
    assert keep2[2:4, 2:4].eq(0).all() and keep2.sum() == 4 * 6 - 4


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_stage_shapes_on_square_and_non_square_grayscale(size):
    torch.manual_seed(0)
    vit = create_encoder(tiny_convvit_spec(size, 1))
    x = torch.randn(2, 1, *size)
    h, w = size
    feats = vit.forward_intermediates(x, intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [
        (2, 8, h // 4, w // 4),
        (2, 16, h // 8, w // 8),
        (2, 32, h // 16, w // 16),
    ]
    tokens = vit.forward_features(x)
    assert tokens.shape == (2, (h // 16) * (w // 16), 32)
    # stage 3 of forward_intermediates is the transformer's output; with norm it is forward_features
    final, normed = vit.forward_intermediates(x, norm=True)
    assert torch.allclose(normed[2].flatten(2).transpose(1, 2), tokens, atol=1e-6)
    assert torch.allclose(final, tokens, atol=1e-6)
    assert vit(x).shape == (2, 32)


def test_sizes_that_do_not_fit_are_refused_in_one_line():
    from ultrassl.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of the patch size 16"):
        create_encoder(tiny_convvit_spec((40, 64)))
    with pytest.raises(ConfigError, match="ConvViT encoder"):
        ConvMAE(tiny_convvit_spec().__class__("tiny", (64, 64), 8, 1, {}), TINY_MAE)


@pytest.mark.parametrize("method", ["convmae", "deblur-convmae"])
def test_loss_falls_over_50_tiny_steps(method):
    """Measured (last 5 / first 5 steps): 0.69 for convmae, 0.58 for deblur-convmae; a new mask each step."""
    overrides = [
        "encoder.arch=convvit_tiny_patch16",
        "encoder.img_size=[32, 48]",
        "encoder.model_args={embed_dim: [16, 16, 32], depth: [1, 1, 2], num_heads: 2}",
        "mae.decoder_dim=32",
        "mae.decoder_depth=1",
        "mae.decoder_heads=2",
        "mae.norm_pix_loss=false",  # raw targets, as test_mae's: per-patch norm makes smooth frames noisy
    ]
    cfg = build_pretrain_config(method, overrides=overrides)
    torch.manual_seed(0)
    model = get_method(method).build_model(cfg)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 48), indexing="ij")
    g = torch.Generator().manual_seed(0)
    phase = torch.rand(8, 1, 1, generator=g) * 6
    target = torch.sin(4 * xx + phase) * torch.cos(3 * yy - phase)  # smooth, learnable frames
    batch = {"target": target[:, None], "input": F.avg_pool2d(target[:, None], 3, 1, 1)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(50):
        out = model(batch, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


# ----------------------------------------------------------------------------------------------------
# checkpoints: the reference layout in, timm out


def _reference_state_dict(model: ConvMAE) -> dict[str, torch.Tensor]:
    """Our pre-training model's weights under ConvMAE's names (``models_convmae``'s state dict)."""
    out = {}
    for k, v in model.state_dict().items():
        out[k.removeprefix("encoder.vit.").removeprefix("encoder.").removeprefix("decoder.")] = v.clone()
    return out


def _reference_features(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """``models_convvit.ConvViT.forward_features`` restated with plain ops on the reference's keys (up to
    its pooling): patch embeds with LayerNorm + GELU, CBlocks, patch_embed4, positions, blocks3, norm."""

    def ln(t, name, eps):
        return F.layer_norm(t, t.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

    def embed(t, i, stride):
        t = F.conv2d(t, sd[f"patch_embed{i}.proj.weight"], sd[f"patch_embed{i}.proj.bias"], stride=stride)
        return F.gelu(ln(t.permute(0, 2, 3, 1), f"patch_embed{i}.norm", 1e-5).permute(0, 3, 1, 2))

    def cblock(t, p):
        c = t.shape[1]
        y = ln(t.permute(0, 2, 3, 1), f"{p}.norm1", 1e-5).permute(0, 3, 1, 2)
        y = F.conv2d(y, sd[f"{p}.conv1.weight"], sd[f"{p}.conv1.bias"])
        y = F.conv2d(y, sd[f"{p}.attn.weight"], sd[f"{p}.attn.bias"], padding=2, groups=c)
        t = t + F.conv2d(y, sd[f"{p}.conv2.weight"], sd[f"{p}.conv2.bias"])
        y = ln(t.permute(0, 2, 3, 1), f"{p}.norm2", 1e-5).permute(0, 3, 1, 2)
        y = F.conv2d(
            F.gelu(F.conv2d(y, sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])),
            sd[f"{p}.mlp.fc2.weight"],
            sd[f"{p}.mlp.fc2.bias"],
        )
        return t + y

    def block(t, p):
        b, n, c = t.shape
        y = ln(t, f"{p}.norm1", 1e-6)
        qkv = F.linear(y, sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(-1)
        t = t + F.linear(
            (attn @ v).transpose(1, 2).reshape(b, n, c),
            sd[f"{p}.attn.proj.weight"],
            sd[f"{p}.attn.proj.bias"],
        )
        y = F.gelu(F.linear(ln(t, f"{p}.norm2", 1e-6), sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"]))
        return t + F.linear(y, sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])

    def depth(stage):
        return len({k.split(".")[1] for k in sd if k.startswith(f"blocks{stage}.")})

    t = embed(x, 1, 4)
    for i in range(depth(1)):
        t = cblock(t, f"blocks1.{i}")
    t = embed(t, 2, 2)
    for i in range(depth(2)):
        t = cblock(t, f"blocks2.{i}")
    t = embed(t, 3, 2).flatten(2).permute(0, 2, 1)
    t = F.linear(t, sd["patch_embed4.weight"], sd["patch_embed4.bias"]) + sd["pos_embed"]
    for i in range(depth(3)):
        t = block(t, f"blocks3.{i}")
    return ln(t, "norm", 1e-6)


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A DeblurringMIM-style pre-training file: full model (fusion convs, decoder), MAE's wrapper, args."""
    model = _model((64, 64), in_chans=3, seed=3)
    _perturb_norms_(model)
    sd = _reference_state_dict(model)
    path = tmp_path_factory.mktemp("ref") / "checkpoint-799.pth"
    args = argparse.Namespace(model="dconvmae_convvit_base_patch16", input_size=64, norm_pix_loss=False)
    torch.save({"model": sd, "optimizer": {}, "epoch": 799, "args": args}, path)
    return path, sd


def test_a_reference_checkpoint_converts_to_the_reference_features(reference_file, tmp_path):
    path, sd = reference_file
    report = ckpt.convert_checkpoint(path, tmp_path / "rgb", model_args={"num_heads": 2})
    assert report["layout"] == "convmae" and report["missing"] == [] and report["unexpected"] == []
    assert "stage1_output_decode.weight" in report["dropped"] and "decoder_pred.weight" in report["dropped"]
    config = json.loads((tmp_path / "rgb" / "config.json").read_text())
    assert config["method"] == "deblur-convmae"  # from args.model
    encoder, _ = ckpt.load_exported(tmp_path / "rgb")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = _reference_features(sd, x, heads=2)
        ours = encoder.forward_features(x)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    assert torch.allclose(ours[:, 0], ref[:, 0], atol=1e-5)  # the reference's token-0 output

    # 3 -> 1 channel (RGB kernels summed): a gray frame gives what the RGB model gives on it repeated
    ckpt.convert_checkpoint(path, tmp_path / "gray", in_chans=1, model_args={"num_heads": 2})
    gray, _ = ckpt.load_exported(tmp_path / "gray")
    g = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(
            gray.forward_features(g), _reference_features(sd, g.repeat(1, 3, 1, 1), 2), atol=1e-5
        )

    # another grid: positions resampled, the rest unchanged
    report = ckpt.convert_checkpoint(path, tmp_path / "wide", img_size=(64, 96), model_args={"num_heads": 2})
    assert any(a.startswith("pos_embed: [1, 16, 32] -> [1, 24, 32]") for a in report["adapted"])


def test_pretrain_from_a_reference_file_continues_with_its_decoder_and_fusion(reference_file, tmp_path):
    path, sd = reference_file
    model = _model((64, 64), in_chans=3, seed=9)
    report = model.load_pretrained(path)
    assert report["decoder"] == "decoder: loaded; fusion: loaded"
    assert torch.equal(model.decoder.decoder_pred.weight, sd["decoder_pred.weight"])
    assert torch.equal(model.encoder.stage1_output_decode.weight, sd["stage1_output_decode.weight"])
    assert torch.equal(model.encoder.vit.blocks3[0].attn.qkv.weight, sd["blocks3.0.attn.qkv.weight"])
    other = ConvMAE(
        tiny_convvit_spec((64, 64), 3), MAEConfig(decoder_dim=16, decoder_depth=1, decoder_heads=2)
    )
    assert "decoder: not loaded" in other.load_pretrained(path)["decoder"]
    # our own training checkpoint's layout (encoder.vit.*, encoder.stage*, decoder.*) continues the same way
    ours = tmp_path / "last.pt"
    torch.save({"model": model.state_dict()}, ours)
    again = _model((64, 64), in_chans=3, seed=11)
    assert again.load_pretrained(ours)["decoder"] == "decoder: loaded; fusion: loaded"
    assert torch.equal(again.decoder.decoder_pred.weight, model.decoder.decoder_pred.weight)


def test_the_export_loads_with_plain_timm_after_import_ultrassl(tmp_path):
    torch.manual_seed(0)
    model = _model((48, 80))
    encoder, spec = model.exportable_encoder()
    out = ckpt.export_encoder(encoder, spec, tmp_path / "export", method="convmae", mean=[0.5], std=[0.25])
    x = torch.randn(2, 1, 48, 80)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        want_tokens = encoder.forward_features(x)
        want_stages = encoder.forward_intermediates(x, intermediates_only=True)
    script = f"""
import json, timm, torch, ultrassl
cfg = json.load(open({str(out / "config.json")!r}))
file = {str(out / "model.safetensors")!r}
m = timm.create_model(cfg["architecture"], pretrained=True, **cfg["model_args"],
                      pretrained_cfg_overlay=dict(file=file)).eval()
f = timm.create_model(cfg["architecture"], pretrained=True, features_only=True, **cfg["model_args"],
                      pretrained_cfg_overlay=dict(file=file)).eval()
x = torch.load({str(tmp_path / "x.pt")!r})
with torch.no_grad():
    torch.save({{"tokens": m.forward_features(x), "stages": f(x), "reduction": f.feature_info.reduction()}},
               {str(tmp_path / "got.pt")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    got = torch.load(tmp_path / "got.pt", weights_only=True)
    assert torch.allclose(got["tokens"], want_tokens, atol=1e-6)
    assert got["reduction"] == [4, 8, 16]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got["stages"], want_stages))


# ----------------------------------------------------------------------------------------------------
# downstream


def test_classifier_partial_tail_and_layer_decay_span_all_three_stages():
    from timm.optim import param_groups_layer_decay

    torch.manual_seed(0)
    vit = create_encoder(tiny_convvit_spec((64, 64)))
    assert trainable_tail(vit, 1) == [vit.blocks3[-1], vit.norm]
    groups = param_groups_layer_decay(vit, weight_decay=0.05, layer_decay=0.5)
    names = {id(p): n for n, p in vit.named_parameters()}
    scales = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    first = scales["patch_embed1.proj.weight"]
    assert first < scales["blocks1.0.conv1.weight"] < scales["blocks2.0.conv1.weight"]
    assert scales["blocks2.0.conv1.weight"] < scales["blocks3.0.attn.qkv.weight"] < scales["norm.weight"]
    assert scales["patch_embed2.proj.weight"] == scales["blocks2.0.conv1.weight"]
    assert len(set(scales.values())) == 1 + 1 + 1 + 2 + 1  # stem, blocks1, blocks2, 2 x blocks3, norm


def _export_tiny(tmp_path: Path, size=(64, 64)) -> Path:
    torch.manual_seed(0)
    encoder, spec = _model(size).exportable_encoder()
    return ckpt.export_encoder(encoder, spec, tmp_path / "export", method="convmae", mean=[0.5], std=[0.25])


def test_backbone_from_an_export_classifies_and_moves_to_another_size(tmp_path):
    backbone = load_backbone(_export_tiny(tmp_path))
    assert isinstance(backbone.encoder, ConvViT)
    bigger = with_image_size(backbone, (64, 96))
    assert bigger.encoder.pos_embed.shape == (1, 24, 32)
    model = classification_model(bigger, 3)
    assert model(torch.randn(2, 1, 64, 96)).shape == (2, 3)


@pytest.fixture(scope="module")
def lesions(tmp_path_factory) -> Path:
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("convmae-seg")
    return make_synthetic_dataset(
        root / "data", n_patients=6, clips_per_patient=1, n_frames=4, size=(64, 64), n_lesion_images=12
    )


@pytest.mark.parametrize("head", ["upernet", "unet"])
def test_both_segmentation_heads_run_on_the_synthetic_lesions(head, lesions, tmp_path):
    torch.manual_seed(0)
    encoder = create_encoder(tiny_convvit_spec((48, 80)))
    seg = SegModel(
        encoder, build_seg_head(head, encoder, 2, **({"channels": 16} if head == "upernet" else {}))
    )
    logits = seg(torch.randn(2, 1, 48, 80))
    assert logits.shape == (2, 2, 48, 80)
    logits.sum().backward()
    assert encoder.patch_embed1.proj.weight.grad.abs().sum() > 0  # the 1/4 stage feeds the head

    cfg = SegmentConfig(
        head=head, folds=2, epochs=2, batch_size=4, upernet_channels=16, device="cpu", n_overlays=1
    )
    out = finetune_segment(_export_tiny(tmp_path), lesions, tmp_path / "eval", cfg, progress=False)
    assert out["summary"]["dice"]["n"] == 2
    assert 0.0 <= out["summary"]["dice"]["mean"] <= 1.0
    predicted = evaluate(tmp_path / "eval", lesions, device="cpu", progress=False)  # the kept fold models
    assert predicted["task"] == "segment" and 0.0 <= predicted["metrics"]["dice"] <= 1.0


def test_classify_linear_partial_and_full_on_a_convvit(lesions, tmp_path):
    export = _export_tiny(tmp_path)
    for mode in ("linear", "partial", "full"):
        cfg = ClassifyConfig(mode=mode, folds=2, epochs=1, batch_size=8, device="cpu")
        out = finetune_classify(export, lesions, tmp_path / mode, cfg, progress=False)
        assert out["summary"]["accuracy"]["n"] == 2, mode
    predicted = evaluate(tmp_path / "full", lesions, device="cpu", progress=False)
    assert predicted["task"] == "classify" and predicted["n"] > 0
