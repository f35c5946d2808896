"""A pre-training method written outside the package, as a user would: one module, no edit under src/.

``ultrassl --plugin tests/toy_method.py pretrain --method toy-patch-mean ...`` imports it, which
registers the method. The task is small but real: a linear head on the encoder's tokens predicts each
patch's mean intensity of a blurred copy of the frame from the sharp frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ultrassl.config import PretrainConfig
from ultrassl.errors import ConfigError
from ultrassl.methods import MethodSpec, PretrainData, PretrainMethod, register_method
from ultrassl.methods.frames import build_frames
from ultrassl.models.masking import patchify
from ultrassl.models.vit import EncoderSpec, create_encoder
from ultrassl.transforms.blur import Blur, BlurConfig

NAME = "toy-patch-mean"


@dataclass
class ToyConfig:
    #: Gaussian sigma of the blurred copy whose patch means are the target
    sigma: float = 1.5

    def check(self) -> None:
        if self.sigma <= 0:
            raise ConfigError(f"sigma must be > 0, got {self.sigma}")


class PatchMean(PretrainMethod):
    def __init__(self, spec: EncoderSpec, cfg: ToyConfig):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.encoder = create_encoder(spec)
        self.head = nn.Linear(self.encoder.embed_dim, 1)

    def exportable_encoder(self) -> tuple[nn.Module, EncoderSpec]:
        return self.encoder, self.spec

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = self.encoder.forward_features(batch["target"])[:, self.encoder.num_prefix_tokens :]
        pred = self.head(tokens).squeeze(-1)
        target = patchify(batch["input"].float(), self.spec.patch_size).mean(-1)
        return {"loss": ((pred.float() - target) ** 2).mean()}


def _build_data(cfg: PretrainConfig, progress: bool = True) -> PretrainData:
    return build_frames(cfg, progress, degrade=Blur(BlurConfig(kind="gaussian", sigma=cfg.toy.sigma)))


register_method(
    MethodSpec(
        name=NAME,
        summary="test method: predict blurred patch means from the sharp frame",
        sections={"toy": ToyConfig},
        build_model=lambda cfg: PatchMean(cfg.encoder, cfg.toy),
        build_data=_build_data,
        defaults={"encoder": {"arch": "tiny", "img_size": [32, 32], "patch_size": 8}},
    )
)
