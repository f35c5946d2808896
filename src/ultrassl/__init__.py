"""ultrassl: self-supervised pre-training and fine-tuning for ultrasound images and videos.

The five steps of a project are one call each, with typed results (:mod:`ultrassl.workflow`,
:mod:`ultrassl.results`)::

    import ultrassl

    ultrassl.index("clips/", "clips.csv", group_pattern=r"^(p\\d+)")
    run = ultrassl.pretrain("deblur-mae", "clips.csv", "runs/deblur", preset="cpu-vit-t112")
    ultrassl.export("runs/deblur", "models/deblur")
    scores = ultrassl.finetune("models/deblur", "labelled.csv", "eval/deblur")
    ultrassl.evaluate("eval/deblur", "new.csv")

:mod:`ultrassl.api` holds the lower-level functions they call (configs built by hand, the method
registry). ``import ultrassl`` loads none of this, nor torch, until a name is first used.
"""

import importlib as _importlib
import logging as _logging
from typing import Any as _Any

__version__ = "0.1.0"

# The library logs under "ultrassl" and prints nothing of its own: the caller's logging config (or the
# command line's, ultrassl.logs) decides where its lines go.
_logging.getLogger("ultrassl").addHandler(_logging.NullHandler())

# timm's registry learns ConvMAE's ConvViT (``convvit_*_patch16``) here, so an export of it loads with
# ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))`` after ``import ultrassl``:
# at once if timm is imported, else at ``import timm`` (so ``import ultrassl`` itself loads no torch).
from ultrassl.models.timm_registration import register_convvit_with_timm as _register  # noqa: E402

_register()

#: the names ``import ultrassl`` offers, and the module each is loaded from on first use. ``finetune``
#: is the sub-package ``ultrassl.finetune``, which calls as :func:`ultrassl.workflow.finetune`.
_LAZY = {
    "index": "ultrassl.workflow",
    "pretrain": "ultrassl.workflow",
    "export": "ultrassl.workflow",
    "finetune": "ultrassl.finetune",
    "evaluate": "ultrassl.workflow",
    "PretrainResult": "ultrassl.results",
    "FinetuneResult": "ultrassl.results",
    "EvaluateResult": "ultrassl.results",
    "Score": "ultrassl.results",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> _Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'ultrassl' has no attribute {name!r}")
    module = _importlib.import_module(_LAZY[name])
    # importing the sub-package ``ultrassl.finetune`` binds it here itself; the rest are kept here once read
    value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
