"""UltraMAE (Rahman & Patel, MIDL 2024): one masked auto-encoder for ultrasound images and clips.

The recipe (no public code; METHODS.md section 3): a ViT over spatio-temporal patches with no CLS token
and fixed sin-cos positions (:class:`~ultrassl.models.st_vit.SpatioTemporalViT`; an image is a 1-frame
clip, repeated to fill one tubelet), random masking of 90% of the tokens for images and 95% for clips,
a 4-block x 384 decoder, and an L2 loss on the masked patches against the *certainty-weighted* frame
(CWUS = frame x its confidence map, computed by the data set). The confidence map does not choose which
patches are masked. The paper's ablations are switches: ``target: raw`` (no CWUS), ``modality: images``
(MAE on images), ``modality: videos``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ultrassl.confidence import confidence_fn
from ultrassl.config import PretrainConfig, method_field
from ultrassl.data.clips import ClipDataset, load_clip_cache
from ultrassl.data.manifest import read_manifest
from ultrassl.errors import ConfigError
from ultrassl.methods.base import PretrainMethod
from ultrassl.methods.registry import MethodSpec, PretrainData, register_method
from ultrassl.models.decoders import SpatioTemporalDecoder, init_linear_and_norm
from ultrassl.models.masking import (
    mask_from_indices,
    noise_from_seeds,
    patchify_tubelets,
    random_token_mask,
    tube_token_mask,
    unpatchify_tubelets,
)
from ultrassl.models.st_vit import SpatioTemporalViT
from ultrassl.models.vit import EncoderSpec

_NORM_PIX_EPS = 1e-6


@dataclass
class UltraMAEConfig:
    """UltraMAE hyper-parameters; defaults are the paper's recipe (ViT-B sizes come from ``encoder``)."""

    tubelet: int = field(
        default=2,
        metadata={
            "help": "frames per tubelet, a token's length in time (its spatial size is encoder.patch_size); "
            "clip_frames must be a multiple of it; an image is repeated to fill one tubelet"
        },
    )
    mask_ratio_image: float = field(
        default=0.9, metadata={"help": "fraction of an image's tokens masked, in (0, 1) (the paper: 0.9)"}
    )
    mask_ratio_video: float = field(
        default=0.95, metadata={"help": "fraction of a clip's tokens masked, in (0, 1) (the paper: 0.95)"}
    )
    mask: str = field(
        default="random",
        metadata={
            "help": "random (the paper: any spatio-temporal token) | tube (one spatial mask for every time "
            "step of a clip)"
        },
    )
    decoder_dim: int = field(
        default=384,
        metadata={
            "help": "width of the reconstruction decoder (the paper: 384), a multiple of decoder_heads and "
            "of 16 (3-D sin-cos positions); the decoder is used in pre-training only, not exported"
        },
    )
    decoder_depth: int = field(
        default=4, metadata={"help": "transformer blocks of the decoder (the paper: 4)"}
    )
    decoder_heads: int = field(
        default=12,
        metadata={
            "help": "attention heads of each decoder block; the paper gives no head count, 12 keeps MAE's "
            "32-wide decoder heads"
        },
    )
    norm_pix_loss: bool = field(
        default=False,
        metadata={
            "help": "normalise each target tubelet patch by its own mean and std before the loss (off: "
            "the L2 loss on the target as it is, as the paper)"
        },
    )
    target: str = field(
        default="cwus",
        metadata={
            "help": "cwus (the frame x its confidence map, the paper) | raw (ablation: the frame's pixels)"
        },
    )
    modality: str = field(
        default="both",
        metadata={
            "help": "both (the paper: images and clips) | images (ablation: stills only, videos not "
            "decoded) | videos (ablation: clips only, stills not decoded)"
        },
    )
    clip_frames: int = field(
        default=16, metadata={"help": "frames per clip (the paper: 16), a multiple of tubelet"}
    )
    clip_fps: float = field(
        default=6.0,
        metadata={
            "help": "frames per second a clip is sampled at (the paper: 6); every frame when the video's "
            "rate is unknown or not above it"
        },
    )
    max_clips_per_video: int = field(
        default=4,
        metadata={
            "help": "at most this many non-overlapping clips cut from each video, evenly spread and decoded "
            "once (a video too short for one gives one, padded with its last frame)"
        },
    )
    mix: str = field(
        default="proportional",
        metadata={
            "help": "order of the image and clip batches in an epoch (a batch holds one modality): "
            "proportional (shuffled together) | alternate (each modality spread evenly over the epoch)"
        },
    )
    confidence_max_side: int = field(
        default=256,
        metadata={
            "help": "confidence maps (of the whole scan-area frame, before the crop) are solved on frames "
            "shrunk (area average) to at most this many pixels on the longer side, then resized back "
            "(bilinear); 0: at full size"
        },
    )
    confidence_alpha: float = field(
        default=2.0,
        metadata={
            "help": "depth attenuation coefficient of the confidence map's random walk (Karamalis et al. "
            "2012; the paper gives none, Karamalis' code and MONAI default to 2.0)"
        },
    )
    confidence_beta: float = field(
        default=90.0,
        metadata={
            "help": "how strongly intensity differences weaken the random walk's edges, weight "
            "exp(-beta x cost) (Karamalis' code and MONAI: 90)"
        },
    )
    confidence_gamma: float = field(
        default=0.05,
        metadata={
            "help": "extra cost of the random walk's horizontal and diagonal steps (Karamalis' code and "
            "MONAI: 0.05)"
        },
    )
    confidence_device: str = field(
        default="cpu",
        metadata={
            "help": "where the maps are solved at start-up: cpu | cuda | auto (cuda when there is one); "
            "maps are computed only with target: cwus"
        },
    )
    confidence_cache: str | None = field(
        default=None,
        metadata={
            "help": "folder that keeps each frame's map, keyed by its content and the parameters, shared by "
            "runs and folds (maps `ultrassl confidence` wrote there are read too); None: solve every run"
        },
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Cross-field checks (the config loader calls this after every layer is merged)."""
        for name in ("mask_ratio_image", "mask_ratio_video"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"ultramae.{name} must be in (0, 1), got {value}")
        choices = {
            "mask": ("random", "tube"),
            "target": ("cwus", "raw"),
            "modality": ("both", "images", "videos"),
            "mix": ("proportional", "alternate"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"ultramae.{name} must be {'|'.join(allowed)}, got {getattr(self, name)!r}")
        if self.tubelet < 1 or self.clip_frames < 1 or self.max_clips_per_video < 1:
            raise ConfigError("ultramae.tubelet, clip_frames and max_clips_per_video must be >= 1")
        if self.clip_frames % self.tubelet:
            raise ConfigError(
                f"ultramae.clip_frames ({self.clip_frames}) must be a multiple of ultramae.tubelet ({self.tubelet})"
            )
        if self.clip_fps <= 0:
            raise ConfigError(f"ultramae.clip_fps must be > 0, got {self.clip_fps}")
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 16:
            raise ConfigError(
                f"ultramae.decoder_dim {self.decoder_dim} must be divisible by decoder_heads "
                f"({self.decoder_heads}) and by 16 (3-D sin-cos positions)"
            )


class UltraMAE(PretrainMethod):
    """``forward(batch)`` with ``batch["input"]``/``["target"]`` clips ``[B, C, T, H, W]`` (T = 1: images)."""

    preview_columns = ("input", "masked_input", "reconstruction", "target")

    def __init__(
        self, encoder_spec: EncoderSpec, cfg: UltraMAEConfig | None = None, drop_path_rate: float = 0.0
    ):
        super().__init__()
        self.cfg = cfg if cfg is not None else UltraMAEConfig()
        self.cfg.check()
        self.encoder_spec = encoder_spec
        max_t = self.cfg.clip_frames // self.cfg.tubelet
        self.encoder = SpatioTemporalViT(encoder_spec, self.cfg.tubelet, max_t, drop_path_rate)
        if self.cfg.target == "cwus":  # the model predicts the frame weighted by its confidence map
            self.preview_titles = {
                "target": "target (x confidence)",
                "reconstruction": "reconstruction (CWUS)",
            }
        self.decoder = SpatioTemporalDecoder(
            grid_hw=self.encoder.grid_size,
            patch_size=self.encoder.patch_size,
            tubelet=self.cfg.tubelet,
            in_chans=self.encoder.in_chans,
            embed_dim=self.encoder.embed_dim,
            decoder_dim=self.cfg.decoder_dim,
            depth=self.cfg.decoder_depth,
            num_heads=self.cfg.decoder_heads,
            max_time_steps=max_t,
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE's init: xavier Linear and (flattened) patch kernel, N(0, 0.02) mask token, unit LayerNorm."""
        self.apply(init_linear_and_norm)
        with torch.no_grad():
            w = self.encoder.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(self.encoder.patch_embed.proj.bias)
            nn.init.normal_(self.decoder.mask_token, std=0.02)

    def exportable_encoder(self) -> tuple[nn.Module, EncoderSpec]:
        """A 2-D timm ViT (class_token=False, avg pool) equal to this encoder on images, and its spec."""
        return self.encoder.to_timm()

    def no_weight_decay(self) -> set[str]:
        return {"decoder.mask_token"}

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        target = batch["target"]
        x = batch.get("input", target)
        x = x.unsqueeze(2) if x.ndim == 4 else x
        target = target.unsqueeze(2) if target.ndim == 4 else target
        if x.shape != target.shape:
            raise ConfigError(f"input {tuple(x.shape)} and target {tuple(target.shape)} differ in shape")
        if x.ndim != 5 or x.shape[1] != self.encoder.in_chans:
            raise ConfigError(f"expected clips [B, {self.encoder.in_chans}, T, H, W], got {tuple(x.shape)}")
        return x, target

    def _fill_tubelet(self, clips: torch.Tensor) -> torch.Tensor:
        """An image (T = 1) repeated to fill one tubelet, as the encoder sees it; clips unchanged."""
        t = self.cfg.tubelet
        return clips.expand(-1, -1, t, -1, -1) if clips.shape[2] == 1 and t > 1 else clips

    def mask_ratio(self, num_frames: int) -> float:
        return self.cfg.mask_ratio_image if num_frames == 1 else self.cfg.mask_ratio_video

    def target_patches(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Float32 tubelet targets ``[B, N, t*p*p*C]`` (an image repeated to fill its tubelet), mean, std."""
        patches = patchify_tubelets(
            self._fill_tubelet(target).float(), self.cfg.tubelet, self.encoder.patch_size
        )
        if not self.cfg.norm_pix_loss:
            return patches, torch.zeros_like(patches[..., :1]), torch.ones_like(patches[..., :1])
        mean = patches.mean(dim=-1, keepdim=True)
        std = (patches.var(dim=-1, keepdim=True) + _NORM_PIX_EPS) ** 0.5
        return (patches - mean) / std, mean, std

    def make_mask(
        self,
        batch_size: int,
        num_frames: int,
        device: torch.device,
        generator: torch.Generator | None = None,
        seeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(idx_keep, idx_mask, time_steps)`` for a batch of ``num_frames``-frame clips.

        The noise comes from ``generator``, else one seed per sample (``batch["mask_seed"]``), else torch.
        """
        nt = self.encoder.time_steps(num_frames)
        space = self.encoder.num_space_tokens
        ratio = self.mask_ratio(num_frames)
        tube = self.cfg.mask == "tube"
        n_noise = space if tube else nt * space
        noise = None
        if generator is None and seeds is not None:
            noise = noise_from_seeds(seeds, n_noise, device)
        if tube:
            idx_keep, idx_mask = tube_token_mask(
                batch_size, nt, space, ratio, device=device, generator=generator, noise=noise
            )
        else:
            idx_keep, idx_mask = random_token_mask(
                batch_size, nt * space, ratio, device=device, generator=generator, noise=noise
            )
        return idx_keep, idx_mask, nt

    def forward(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Returns ``loss`` (float32), ``pred [B, N, t*p*p*C]``, ``idx_keep``, ``idx_mask``, ``mask [B, N]``."""
        x, target = self._inputs(batch)
        idx_keep, idx_mask, nt = self.make_mask(
            x.shape[0], x.shape[2], x.device, generator=generator, seeds=batch.get("mask_seed")
        )
        latent = self.encoder(x, idx_keep)
        pred = self.decoder(latent, idx_keep, nt)
        mask = mask_from_indices(idx_mask, pred.shape[1])
        t, _, _ = self.target_patches(target)
        per_patch = ((pred.float() - t) ** 2).mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
        return {"loss": loss, "pred": pred, "idx_keep": idx_keep, "idx_mask": idx_mask, "mask": mask}

    @torch.no_grad()
    def reconstruct(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Frame 0 of each item as ``[B, C, H, W]``: input, masked input, reconstruction, prediction, target.

        ``reconstruction`` = predicted masked patches + the *target's* visible patches (the model predicts
        the CWUS frame, so pasting the raw input back would mix two different images).
        """
        x, target = self._inputs(batch)
        out = self.forward(batch, generator=generator)
        t, p, c = self.cfg.tubelet, self.encoder.patch_size, self.encoder.in_chans
        nt = self.encoder.time_steps(x.shape[2])
        grid = (nt, *self.encoder.grid_size)
        _, mean, std = self.target_patches(target)
        pred = out["pred"].float() * std + mean
        m = out["mask"].unsqueeze(-1)
        inp = patchify_tubelets(self._fill_tubelet(x).float(), t, p)
        tgt = patchify_tubelets(self._fill_tubelet(target).float(), t, p)

        def frame0(patches: torch.Tensor) -> torch.Tensor:
            return unpatchify_tubelets(patches, t, p, c, grid)[:, :, 0]

        return {
            "input": x[:, :, 0].float(),
            "masked_input": frame0(inp * (1 - m)),
            "reconstruction": frame0(tgt * (1 - m) + pred * m),
            "prediction": frame0(pred),
            "target": target[:, :, 0].float(),
        }


# ----------------------------------------------------------------------------------------------------
# registration


@dataclass
class UltraMAEPretrainConfig(PretrainConfig):
    """Config of ``ultramae``: the common sections plus ``ultramae`` (the paper's recipe)."""

    method: str = method_field("ultramae")
    ultramae: UltraMAEConfig = field(default_factory=UltraMAEConfig)


def build_model(cfg: UltraMAEPretrainConfig) -> UltraMAE:
    return UltraMAE(cfg.encoder, cfg.ultramae)


def build_data(cfg: UltraMAEPretrainConfig, progress: bool = True) -> PretrainData:
    """Images and clips of the manifest, each with its confidence map (for the CWUS target), decoded
    once and served in one-modality batches (:class:`~ultrassl.data.clips.ClipDataset`)."""
    if not cfg.data.manifest:
        raise ConfigError("no data: pass --data MANIFEST (make one with `ultrassl index DATA_DIR`)")
    u, data, encoder = cfg.ultramae, cfg.data, cfg.encoder
    conf = None
    if u.target == "cwus":
        conf = confidence_fn(
            u.confidence_alpha,
            u.confidence_beta,
            u.confidence_gamma,
            u.confidence_max_side,
            u.confidence_device,
            u.confidence_cache,
        )
    cache = load_clip_cache(
        read_manifest(data.manifest),
        rgb=encoder.in_chans == 3,
        clip_frames=u.clip_frames,
        clip_fps=u.clip_fps,
        max_clips_per_video=u.max_clips_per_video,
        modality=u.modality,
        scan_area=data.scan_area,
        spacing_mm=data.spacing_mm,
        confidence=conf,
        progress=progress,
        **data.store_args(),
        workers=data.decode_workers,
        timeout=data.decode_timeout,
    )
    clips = ClipDataset(
        cache,
        tuple(encoder.img_size),
        encoder.in_chans,
        target=u.target,
        scale=data.crop_scale,
        ratio=data.crop_ratio,
        hflip=data.hflip,
        mean=data.mean,
        std=data.std,
        mix=u.mix,
        seed=cfg.train.seed,
    )
    return PretrainData(clips, None, list(cache.skipped))


register_method(
    MethodSpec(
        name="ultramae",
        summary="UltraMAE (Rahman & Patel 2024): one ViT for images and clips, confidence-weighted target",
        sections={"ultramae": UltraMAEConfig},
        build_model=build_model,
        build_data=build_data,
        config=UltraMAEPretrainConfig,
    )
)
