"""The method registry: what a pre-training method is made of, filled by each method module on import.

A method module describes itself once with a :class:`MethodSpec` (its config sections and their
defaults, its model and data builders, which output picks the best checkpoint) and calls
:func:`register_method`. ``config``-resolution, the CLI, the Python API and the loop read the registry,
so adding a method, inside the package or in a user's own module, touches nothing else (as timm's
``@register_model`` and mmengine's ``MODELS.register_module()``). Unknown names are refused with the
list of known ones.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import keyword
import re
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ultrassl.config import PretrainConfig, check, load_preset, merge, parse_set, to_dict
from ultrassl.errors import ConfigError

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from ultrassl.methods.base import PretrainMethod


class PretrainData(NamedTuple):
    """What a method's data builder returns: the training set, an optional held-out set (its mean
    ``val_key`` output picks ``best.pt``) and the files that could not be used (path, reason)."""

    train: Dataset
    val: Dataset | None = None
    skipped: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class MethodSpec:
    """A pre-training method as the rest of the package sees it."""

    name: str
    #: one line for ``ultrassl methods``
    summary: str
    #: the config sections this method reads beside the common ones (name -> dataclass)
    sections: Mapping[str, type]
    #: config -> the method's ``nn.Module`` (a :class:`~ultrassl.methods.base.PretrainMethod`)
    build_model: Callable[[PretrainConfig], PretrainMethod]
    #: (config, progress) -> :class:`PretrainData`
    build_data: Callable[[PretrainConfig, bool], PretrainData]
    #: values that define the method, merged before presets and flags (``{"blur": {"kind": ...}}``)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: fills config values that come from the data (USCL's class names) before the run is saved
    prepare: Callable[[PretrainConfig], None] | None = None
    #: the model output whose held-out mean picks ``best.pt`` (for methods whose data holds some out)
    val_key: str = "loss"


_METHODS: dict[str, MethodSpec] = {}
_CONFIG_CLASSES: dict[str, type] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry (a second registration of the same name must be the same method)."""
    known = _METHODS.get(spec.name)
    if known == spec:
        return known
    if known is not None:
        raise ConfigError(f"method {spec.name!r} is already registered (by {known.build_model.__module__})")
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", spec.name):
        raise ConfigError(f"method name {spec.name!r}: use lower-case letters, digits, '-' and '_'")
    clash = [n for n in _METHODS if _class_name(n) == _class_name(spec.name)]
    if clash:
        raise ConfigError(f"method name {spec.name!r} is too close to the registered {clash[0]!r}")
    common = {f.name for f in dataclasses.fields(PretrainConfig)}
    for section in spec.sections:
        if not section.isidentifier() or keyword.iskeyword(section):
            raise ConfigError(f"method {spec.name!r}: section name {section!r} is not a Python identifier")
        if section in common:
            raise ConfigError(f"method {spec.name!r}: section {section!r} is a common config section")
    _METHODS[spec.name] = spec
    return spec


def _section_with_defaults(cls: type, values: dict[str, Any], where: str) -> Any:
    """A config section at its dataclass defaults with the method's defaults merged in."""
    return merge(cls(), values, where)


def _class_name(method: str) -> str:
    return "".join(part.capitalize() for part in method.replace("-", "_").split("_")) + "PretrainConfig"


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise ConfigError(
            f"unknown method {name!r}; registered methods: {', '.join(method_names())} "
            "(a method from your own module: ultrassl --plugin MODULE_OR_FILE ...)"
        )
    return _METHODS[name]


def config_class(name: str) -> type:
    """The config dataclass of a method: :class:`PretrainConfig` plus the method's own sections.

    A bare instance is the method's own starting point: ``method`` is set and the method's defaults
    are applied (``config_class("mae")()`` has no blur, ``deblur-mae``'s has sigma 1.1).
    """
    if name not in _CONFIG_CLASSES:
        spec = get_method(name)
        types = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
        hints = typing.get_type_hints(PretrainConfig)
        types.update(hints)
        types.update(spec.sections)
        fields: list[tuple[str, Any, Any]] = [("method", str, field(default=name))]
        for section, tp in types.items():
            if section == "method":
                continue
            values = spec.defaults.get(section)
            if dataclasses.is_dataclass(tp):
                factory = functools.partial(_section_with_defaults, tp, dict(values or {}), section)
                fields.append((section, tp, field(default_factory=factory)))
            elif section in spec.defaults:
                fields.append((section, tp, field(default=values)))
        cls = dataclasses.make_dataclass(_class_name(name), fields, bases=(PretrainConfig,))
        cls.__module__ = __name__
        cls.__doc__ = (
            f"Pre-training config of method {name!r}: the common sections plus {list(spec.sections)}."
        )
        globals()[cls.__name__] = cls  # picklable (DataLoader workers, decode processes)
        _CONFIG_CLASSES[name] = cls
    return _CONFIG_CLASSES[name]


def __getattr__(attr: str) -> type:
    """Config classes by name, made on first use (so a worker process can unpickle a config)."""
    for name in _METHODS:
        if config_class(name).__name__ == attr:
            return _CONFIG_CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def _sections_elsewhere(method: str) -> set[str]:
    return {s for n, spec in _METHODS.items() if n != method for s in spec.sections} - set(
        get_method(method).sections
    )


def _refuse_foreign_sections(method: str, values: Mapping[str, Any], source: str) -> None:
    """A section another method reads but this one does not is an error, not silently ignored."""
    foreign = sorted(set(values) & _sections_elsewhere(method))
    if foreign:
        own = ", ".join(get_method(method).sections) or "none"
        raise ConfigError(
            f"{source}: section {foreign[0]!r} is not read by method {method!r} (its own sections: {own})"
        )


def build_pretrain_config(
    method: str | None = None,
    preset: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> PretrainConfig:
    """Resolve the layered config for ``ultrassl pretrain``, then check the final values once."""
    preset_values = load_preset(preset) if preset else {}
    method = method or preset_values.get("method") or "mae"
    cfg = config_class(method)()
    preset_values = {k: v for k, v in preset_values.items() if k != "method"}
    _refuse_foreign_sections(method, preset_values, f"preset {preset}")
    merge(cfg, preset_values)
    merge(cfg, flags or {})
    set_values = parse_set(overrides)
    _refuse_foreign_sections(method, set_values, "--set")
    merge(cfg, set_values)
    cfg.method = method
    return check(cfg)


def as_method_config(cfg: PretrainConfig) -> PretrainConfig:
    """``cfg`` as its method's config class (a bare :class:`PretrainConfig` is read through the method)."""
    if isinstance(cfg, config_class(cfg.method)):
        return cfg
    return config_from_dict(to_dict(cfg), "config")


#: sections that configs saved before the registry carried for every method, read or not
_LEGACY_SECTIONS = ("mae", "blur", "ultramae", "uscl")


def config_from_dict(values: Mapping[str, Any], source: str = "config") -> PretrainConfig:
    """A saved config (``config.yaml``, a checkpoint's ``config``) as its method's dataclass.

    Configs written before the registry held every method's section; the ones this method does not
    read are dropped. Options added since the config was written take the method's defaults.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping, got {type(values).__name__}")
    method = values.get("method", "mae")
    cls = config_class(method)
    own = {f.name for f in dataclasses.fields(cls)}
    kept = {k: v for k, v in values.items() if k in own or k not in _LEGACY_SECTIONS}
    return check(merge(cls(), kept))


# ----------------------------------------------------------------------------------------------------
# methods from outside the package


def load_plugin(name_or_path: str) -> str:
    """Import a user's module (a dotted name, or a ``.py`` file) so that it registers its methods.

    A file is imported under its own name with its folder put on ``sys.path``, so worker processes
    (spawned DataLoader or decode workers) can import it again to unpickle what it defines. Returns the
    module's name. Plugins are code the user names on the command line; nothing is ever imported
    because a checkpoint or a config mentions it.
    """
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.is_file():
            raise ConfigError(f"--plugin {name_or_path}: no such file")
        folder, module_name = str(path.resolve().parent), path.stem
        loaded = sys.modules.get(module_name)
        if loaded is not None:
            if Path(getattr(loaded, "__file__", "") or "").resolve() != path.resolve():
                raise ConfigError(
                    f"--plugin {name_or_path}: a module named {module_name!r} is already loaded"
                )
            return module_name
        if folder not in sys.path:
            sys.path.insert(0, folder)
    else:
        module_name = name_or_path
    try:
        importlib.import_module(module_name)
    except ConfigError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as exc:  # a plugin is user code: any failure is one line, naming it
        sys.modules.pop(module_name, None)
        raise ConfigError(
            f"--plugin {name_or_path}: importing it failed ({type(exc).__name__}: {exc})"
        ) from None
    return module_name
