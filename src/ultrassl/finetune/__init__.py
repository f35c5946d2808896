"""Downstream evaluation: classification and segmentation fine-tuning with grouped k-fold.

The package itself calls as :func:`ultrassl.workflow.finetune`: ``ultrassl.finetune(weights, data, out,
...)`` is one evaluation, while ``ultrassl.finetune.classify``, ``ultrassl.finetune.segment``, ... stay
the modules they are (a package named like a function it must also be: Python binds a sub-package to
its parent's attribute, so ``ultrassl.finetune`` is this package whichever is imported first).
"""

import sys as _sys
import types as _types
from typing import Any as _Any


class _CallablePackage(_types.ModuleType):
    """This package, callable as :func:`ultrassl.workflow.finetune` (imported on the first call)."""

    def __call__(self, *args: _Any, **kwargs: _Any) -> _Any:
        from ultrassl.workflow import finetune

        return finetune(*args, **kwargs)

    @property
    def __signature__(self) -> _Any:  # inspect.signature and help() show the function's
        import inspect

        from ultrassl.workflow import finetune

        return inspect.signature(finetune)


_sys.modules[__name__].__class__ = _CallablePackage
