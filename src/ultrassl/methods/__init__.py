"""Pre-training methods. Importing this package registers the built-in ones (one module each); a
user's module registers its own the same way (:func:`~ultrassl.methods.registry.register_method`)."""

from ultrassl.methods import convmae, mae, ultramae, uscl  # noqa: F401  (each registers itself)
from ultrassl.methods.base import PretrainMethod
from ultrassl.methods.registry import (
    MethodSpec,
    PretrainData,
    as_method_config,
    build_pretrain_config,
    config_class,
    config_from_dict,
    get_method,
    load_plugin,
    method_names,
    register_method,
)

__all__ = [
    "MethodSpec",
    "PretrainData",
    "PretrainMethod",
    "as_method_config",
    "build_pretrain_config",
    "config_class",
    "config_from_dict",
    "get_method",
    "load_plugin",
    "method_names",
    "register_method",
]
