"""ultrassl: self-supervised pre-training and fine-tuning for ultrasound images and videos."""

import logging as _logging

__version__ = "0.1.0"

# The library logs under "ultrassl" and prints nothing of its own: the caller's logging config (or the
# command line's, ultrassl.logs) decides where its lines go.
_logging.getLogger("ultrassl").addHandler(_logging.NullHandler())

# timm's registry learns ConvMAE's ConvViT (``convvit_*_patch16``) here, so an export of it loads with
# ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))`` after ``import ultrassl``:
# at once if timm is imported, else at ``import timm`` (so ``import ultrassl`` itself loads no torch).
from ultrassl.models.timm_registration import register_convvit_with_timm as _register  # noqa: E402

_register()
