"""The test-size models every test shares: a 2-block ViT of width 32 with 8-px patches on a
non-square, 1-channel input (STYLE.md: tiny, non-square, grayscale)."""

from __future__ import annotations

from typing import Any

from ultrassl.models.vit import EncoderSpec

TINY_VIT_ARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2}
#: the same model as config overrides (``--set`` items)
TINY_VIT_OVERRIDES = [
    "encoder.arch=tiny",
    "encoder.img_size=[32, 48]",
    "encoder.patch_size=8",
    "encoder.model_args={embed_dim: 32, depth: 2, num_heads: 2}",
]


def tiny_vit_spec(img_size: tuple[int, int] = (32, 48), in_chans: int = 1, **model_args: Any) -> EncoderSpec:
    return EncoderSpec("tiny", tuple(img_size), 8, in_chans, {**TINY_VIT_ARGS, **model_args})


TINY_CONVVIT_ARGS = {"embed_dim": [8, 16, 32], "depth": [1, 1, 2], "num_heads": 2}
#: a test-size ConvViT (ConvMAE's encoder) on the same non-square, 1-channel input (token stride 16)
TINY_CONVVIT_OVERRIDES = [
    "encoder.arch=convvit_tiny_patch16",
    "encoder.img_size=[32, 48]",
    "encoder.patch_size=16",
    "encoder.model_args={embed_dim: [8, 16, 32], depth: [1, 1, 2], num_heads: 2}",
]


def tiny_convvit_spec(
    img_size: tuple[int, int] = (32, 48), in_chans: int = 1, **model_args: Any
) -> EncoderSpec:
    return EncoderSpec(
        "convvit_tiny_patch16", tuple(img_size), 16, in_chans, {**TINY_CONVVIT_ARGS, **model_args}
    )


#: test sizes per method config section (a method with other sections runs at its defaults)
TINY_SECTIONS = {
    "mae": ["mae.decoder_dim=32", "mae.decoder_depth=1", "mae.decoder_heads=2"],
    "ultramae": [
        "ultramae.decoder_dim=32",
        "ultramae.decoder_depth=1",
        "ultramae.decoder_heads=2",
        "ultramae.clip_frames=4",
        "ultramae.max_clips_per_video=1",
    ],
}


#: ``ultrassl.pretrain(method, data, out, **TINY_PRETRAIN_CALL)``: a tiny MAE on the CPU in fp32 for 2
#: steps, without the extras a real run draws (previews, TensorBoard)
TINY_PRETRAIN_CALL = dict(
    preset="tiny",
    set=[*TINY_VIT_OVERRIDES, *TINY_SECTIONS["mae"]],
    max_steps=2,
    batch_size=4,
    device="cpu",
    precision="fp32",
    train={"tensorboard": False},
    previews={"every": 0},
)


#: the synthetic lung data of the issue-level acceptance tests (18 one-clip patients, three classes):
#: the pre-training and online-probe acceptance runs and the byte-for-byte determinism test share it
ACCEPTANCE_LUNG = dict(
    n_patients=18, clips_per_patient=1, n_frames=8, size=(64, 64), n_lesion_images=0, seed=4
)
