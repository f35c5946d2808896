"""ConvMAE's ConvViT in timm's registry (``convvit_{tiny,small,base}_patch16``) from ``import ultrassl``,
without importing torch or timm there: a process that never touches timm (``ultrassl --help``, a
config read) does not pay for it, and one that does finds the architectures registered whichever it
imports first.

:func:`register_convvit_with_timm` imports :mod:`ultrassl.models.convvit` (whose import registers them)
at once when timm is already imported; otherwise the next ``import timm`` does it, right after timm's own
module has run (a one-shot finder on ``sys.meta_path`` that takes itself off at that import).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from types import ModuleType

__all__ = ["register_convvit_with_timm"]

#: the module whose import registers the ConvViT architectures with timm
CONVVIT = "ultrassl.models.convvit"


def register_convvit_with_timm() -> None:
    """Register the ConvViT architectures with timm now if timm is imported, else at its import."""
    if "timm" in sys.modules:
        importlib.import_module(CONVVIT)
    elif not any(isinstance(f, _AtTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AtTimmImport())


class _AtTimmImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: at ``import timm`` it takes itself off ``sys.meta_path``, lets the other
    finders find timm, and has the loader import :data:`CONVVIT` once timm's module has run."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ThenConvViT(spec.loader)
        return spec


class _ThenConvViT(importlib.abc.Loader):
    """timm's own loader, then ``import ultrassl.models.convvit``; the module keeps timm's loader."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        try:
            importlib.import_module(CONVVIT)
        except Exception as exc:  # noqa: BLE001 - never break the user's own `import timm`
            logging.getLogger(__name__).warning(
                f"ConvViT (convvit_*_patch16) not registered with timm: importing {CONVVIT} failed ({exc})"
            )
