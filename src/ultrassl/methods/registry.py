"""The method registry: what a pre-training method is made of, filled by each method module on import.

A method module describes itself once with a :class:`MethodSpec` (its config sections and their
defaults, its model and data builders, which output picks the best checkpoint, its presets) and calls
:func:`register_method`. ``config``-resolution, the CLI, the Python API and the loop read the registry,
so adding a method, inside the package or in a user's own module, touches nothing else (as timm's
``@register_model`` and mmengine's ``MODELS.register_module()``). Unknown names are refused with the
list of known ones.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ultrassl.config import PretrainConfig, check, load_preset, merge, parse_set
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
    if known is not None and known != spec:
        raise ConfigError(f"method {spec.name!r} is already registered (by {known.build_model.__module__})")
    for section in spec.sections:
        if section in {f.name for f in dataclasses.fields(PretrainConfig)}:
            raise ConfigError(f"method {spec.name!r}: section {section!r} is a common config section")
    _METHODS[spec.name] = spec
    _CONFIG_CLASSES.pop(spec.name, None)
    return spec


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
    """The config dataclass of a method: :class:`PretrainConfig` plus the method's own sections."""
    if name not in _CONFIG_CLASSES:
        spec = get_method(name)
        fields = [(s, cls, field(default_factory=cls)) for s, cls in spec.sections.items()]
        ident = "".join(part.capitalize() for part in name.replace("-", "_").split("_"))
        cls = dataclasses.make_dataclass(f"{ident}PretrainConfig", fields, bases=(PretrainConfig,))
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
    spec = get_method(method)
    cfg = config_class(method)(method=method)
    merge(cfg, dict(spec.defaults))
    preset_values = {k: v for k, v in preset_values.items() if k != "method"}
    _refuse_foreign_sections(method, preset_values, f"preset {preset}")
    merge(cfg, preset_values)
    merge(cfg, flags or {})
    set_values = parse_set(overrides)
    _refuse_foreign_sections(method, set_values, "--set")
    merge(cfg, set_values)
    cfg.method = method
    return check(cfg)


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
    cfg = merge(cls(method=method), dict(get_method(method).defaults))
    return check(merge(cfg, kept))


# ----------------------------------------------------------------------------------------------------
# methods from outside the package


def load_plugin(name_or_path: str) -> str:
    """Import a user's module (a dotted name, or a ``.py`` file) so that it registers its methods.

    Returns the module's name. Plugins are code the user names on the command line; nothing is ever
    imported because a checkpoint or a config mentions it.
    """
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.is_file():
            raise ConfigError(f"--plugin {name_or_path}: no such file")
        module_name = f"ultrassl_plugin_{path.stem}"
        if module_name in sys.modules:
            return module_name
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"--plugin {name_or_path}: not an importable Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module_name
    try:
        importlib.import_module(name_or_path)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"--plugin {name_or_path}: cannot import it ({exc})") from None
    return name_or_path
