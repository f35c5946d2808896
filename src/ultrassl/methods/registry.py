"""The method registry: what a pre-training method is made of, filled by each method module on import.

A method module describes itself once with a :class:`MethodSpec` (its config class, or its config
sections and their defaults; its model and data builders; which output picks the best checkpoint) and
calls :func:`register_method`. ``config``-resolution, the CLI, the Python API and the loop read the
registry, so adding a method, inside the package or in a user's own module, touches nothing else (as timm's
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
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from ultrassl.config import PretrainConfig, check, load_preset, merge, method_field, parse_set, to_dict
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


C = TypeVar("C", bound=PretrainConfig)


@dataclass(frozen=True)
class MethodSpec(Generic[C]):
    """A pre-training method as the rest of the package sees it.

    Its config is either a dataclass written out in the method's module (``config``, what the built-in
    methods do: a subclass of :class:`PretrainConfig` with one field per section, whose defaults are the
    method's, so type checkers and editors see ``cfg.mae``) or, when ``config`` is None, a class the
    registry makes from ``sections`` and ``defaults`` (the short way for a method in a user's module;
    see :func:`config_class`).
    """

    name: str
    #: one line for ``ultrassl methods``
    summary: str
    #: the config sections this method reads beside the common ones (name -> dataclass); with ``config``
    #: given, exactly its fields beyond :class:`PretrainConfig`'s, of the same types
    sections: Mapping[str, type]
    #: config -> the method's ``nn.Module`` (a :class:`~ultrassl.methods.base.PretrainMethod`)
    build_model: Callable[[C], PretrainMethod]
    #: (config, progress) -> :class:`PretrainData`
    build_data: Callable[[C, bool], PretrainData]
    #: values that define the method, merged before presets and flags (``{"blur": {"kind": ...}}``);
    #: only without ``config`` (a written-out class holds them as its field defaults)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: fills config values that come from the data (USCL's class names) before the run is saved
    prepare: Callable[[C], None] | None = None
    #: the model output whose held-out mean picks ``best.pt`` (for methods whose data holds some out)
    val_key: str = "loss"
    #: learns from the manifest's labels (semi-supervised, as USCL): an evaluation that limits the labels
    #: (a few-label curve) would have to limit them in pre-training too
    uses_labels: bool = False
    #: the method's config dataclass (a :class:`PretrainConfig` subclass whose ``method`` defaults to
    #: ``name``); None: made from ``sections`` and ``defaults`` on first use
    config: type[C] | None = None


_METHODS: dict[str, MethodSpec[Any]] = {}
#: the config classes made for methods registered without one (see :func:`config_class`)
_CONFIG_CLASSES: dict[str, type[PretrainConfig]] = {}


def register_method(spec: MethodSpec[C]) -> MethodSpec[C]:
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
    if spec.config is not None:
        _check_config_class(spec)
    _METHODS[spec.name] = spec
    return spec


def _check_config_class(spec: MethodSpec[Any]) -> None:
    """A written-out config class must be what :func:`config_class` would make from the spec: the common
    sections plus exactly ``spec.sections`` (same types), ``method`` defaulting to the method's name."""
    cls, where = spec.config, f"method {spec.name!r}: config class"
    if not (isinstance(cls, type) and issubclass(cls, PretrainConfig) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"{where} {cls!r} is not a dataclass subclass of PretrainConfig")
    if spec.defaults:
        raise ConfigError(
            f"{where} {cls.__name__}: give the defaults as its field defaults, not in defaults="
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    common = [f.name for f in dataclasses.fields(PretrainConfig)]
    own = [name for name in fields if name not in common]
    if own != list(spec.sections):
        raise ConfigError(f"{where} {cls.__name__} has the sections {own}, the spec {list(spec.sections)}")
    hints = typing.get_type_hints(cls)
    for section, tp in spec.sections.items():
        if hints[section] is not tp:
            have, want = (getattr(t, "__qualname__", repr(t)) for t in (hints[section], tp))
            raise ConfigError(f"{where} {cls.__name__}.{section} is {have}, the spec's section {want}")
    if fields["method"].default != spec.name:
        raise ConfigError(f"{where} {cls.__name__}.method defaults to {fields['method'].default!r}")


def _section_with_defaults(cls: type, values: dict[str, Any], where: str) -> Any:
    """A config section at its dataclass defaults with the method's defaults merged in."""
    return merge(cls(), values, where)


def _class_name(method: str) -> str:
    return "".join(part.capitalize() for part in method.replace("-", "_").split("_")) + "PretrainConfig"


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec[Any]:
    if name not in _METHODS:
        raise ConfigError(
            f"unknown method {name!r}; registered methods: {', '.join(method_names())} "
            "(a method from your own module: ultrassl --plugin MODULE_OR_FILE ...)"
        )
    return _METHODS[name]


def config_class(name: str) -> type[PretrainConfig]:
    """The config dataclass of a method: :class:`PretrainConfig` plus the method's own sections.

    A bare instance is the method's own starting point: ``method`` is set and the method's defaults
    are applied (``config_class("mae")()`` has no blur, ``deblur-mae``'s has sigma 1.1).

    The built-in methods write theirs out (``MAEPretrainConfig`` in ``methods/mae.py``, given as
    ``MethodSpec.config``). For a method registered with ``sections`` and ``defaults`` alone (a user's
    module, as ``tests/toy_method.py``), a class is made here on first use: the same fields, each
    section at its dataclass defaults with the method's ``defaults`` merged in. Type checkers do not
    see its sections; it pickles by name through this module (:func:`__getattr__`).
    """
    spec = get_method(name)
    if spec.config is not None:
        return spec.config
    if name not in _CONFIG_CLASSES:
        _CONFIG_CLASSES[name] = _make_config_class(spec)
    return _CONFIG_CLASSES[name]


def _make_config_class(spec: MethodSpec[Any]) -> type[PretrainConfig]:
    """A config class for a spec without one (the fallback :func:`config_class` describes)."""
    types = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
    hints = typing.get_type_hints(PretrainConfig)
    types.update(hints)
    types.update(spec.sections)
    fields: list[tuple[str, Any, Any]] = [("method", str, method_field(spec.name))]
    for section, tp in types.items():
        if section == "method":
            continue
        values = spec.defaults.get(section)
        if dataclasses.is_dataclass(tp):
            factory = functools.partial(_section_with_defaults, tp, dict(values or {}), section)
            fields.append((section, tp, field(default_factory=factory)))
        elif section in spec.defaults:
            fields.append((section, tp, field(default=values)))
    cls = dataclasses.make_dataclass(_class_name(spec.name), fields, bases=(PretrainConfig,))
    cls.__module__ = __name__
    cls.__doc__ = (
        f"Pre-training config of method {spec.name!r}: the common sections plus {list(spec.sections)}."
    )
    globals()[cls.__name__] = cls  # picklable (DataLoader workers, decode processes)
    return cls


def __getattr__(attr: str) -> type:
    """The config classes :func:`config_class` makes, by name, made on first use (so a worker process
    can unpickle a config). A built-in method's name of that form (``MaePretrainConfig``, the class it
    had before it was written out) gives its written-out class."""
    for name in _METHODS:
        if _class_name(name) == attr:
            return config_class(name)
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
    if type(cfg) is config_class(cfg.method):
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
