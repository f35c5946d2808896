"""Each built-in method's config class is written out in its module (type checkers see ``cfg.mae``), and
reads, writes and resumes exactly what the classes the registry used to make did. A method registered
with ``sections`` and ``defaults`` alone (a user's module) still gets a class made for it."""

from __future__ import annotations

import dataclasses
import pickle
import typing
from pathlib import Path

import pytest
import yaml

from ultrassl.config import PretrainConfig, to_dict
from ultrassl.errors import ConfigError
from ultrassl.methods import (
    MethodSpec,
    as_method_config,
    build_pretrain_config,
    config_class,
    config_from_dict,
    get_method,
    load_plugin,
    register_method,
)
from ultrassl.methods.convmae import ConvMAEPretrainConfig, DeblurConvMAEPretrainConfig
from ultrassl.methods.mae import DeblurMAEPretrainConfig, MAEConfig, MAEPretrainConfig
from ultrassl.methods.ultramae import UltraMAEConfig, UltraMAEPretrainConfig
from ultrassl.methods.uscl import USCLConfig, USCLPretrainConfig
from ultrassl.runs import check_resume_config
from ultrassl.transforms.blur import BlurConfig

TOY = Path(__file__).resolve().parents[1] / "toy_method.py"
OLD = yaml.safe_load((Path(__file__).with_name("configs_before_typed_classes.yaml")).read_text())
#: options added since the fixture was written: (section, the key it follows, its name, its default)
ADDED_SINCE = [
    ("data", "decode_workers", "decode_timeout", 600.0),
    ("train", "log_every", "log_interval_s", None),
    ("train", "time_limit", "schedule_to_time_limit", False),
    ("optim", "constant_epochs", "constant_steps", None),
]


def today(old: dict) -> dict:
    """A config dict of the fixture as today's classes write it: each option added since, at its default,
    in its place (so the old keys, values and order are still compared one by one)."""
    out = dict(old)
    for section, after, name, default in ADDED_SINCE:
        items = list(out[section].items())
        at = [k for k, _ in items].index(after) + 1
        out[section] = dict(items[:at] + [(name, default)] + items[at:])
    return out


BUILTIN = {
    "mae": (MAEPretrainConfig, {"mae": MAEConfig, "blur": BlurConfig}),
    "deblur-mae": (DeblurMAEPretrainConfig, {"mae": MAEConfig, "blur": BlurConfig}),
    "convmae": (ConvMAEPretrainConfig, {"mae": MAEConfig, "blur": BlurConfig}),
    "deblur-convmae": (DeblurConvMAEPretrainConfig, {"mae": MAEConfig, "blur": BlurConfig}),
    "ultramae": (UltraMAEPretrainConfig, {"ultramae": UltraMAEConfig}),
    "uscl": (USCLPretrainConfig, {"uscl": USCLConfig}),
}


@pytest.mark.parametrize("method", sorted(BUILTIN))
def test_a_builtin_config_class_is_written_out_with_typed_sections(method):
    cls, sections = BUILTIN[method]
    assert config_class(method) is cls and get_method(method).config is cls
    hints = typing.get_type_hints(config_class(method))
    for section, tp in sections.items():
        assert hints[section] is tp, section
    common = typing.get_type_hints(PretrainConfig)
    assert {k: v for k, v in hints.items() if k in common} == common


@pytest.mark.parametrize("method", sorted(BUILTIN))
def test_defaults_and_the_written_dict_are_the_old_ones_key_order_included(method):
    new, expected = to_dict(config_class(method)()), today(OLD[method])
    assert new == expected and list(new) == list(OLD[method])
    assert yaml.safe_dump(new, sort_keys=False) == yaml.safe_dump(expected, sort_keys=False)


@pytest.mark.parametrize(
    "name, method, preset",
    [(m, m, None) for m in sorted(BUILTIN)]
    + [("deblur-mae tiny", "deblur-mae", "tiny"), ("uscl uscl-cpu", None, "uscl-cpu")],
)
def test_a_run_written_before_loads_and_resumes(name, method, preset, tmp_path):
    old = OLD[name]
    cfg = config_from_dict(old, "config.yaml")
    assert type(cfg) is config_class(old["method"]) and to_dict(cfg) == today(old)
    # the same command today resolves to the same config: the resume check accepts the old run
    check_resume_config(old, to_dict(build_pretrain_config(method, preset)), tmp_path / "last.pt")
    # a config of the old class made while the registry carried every section still reads
    legacy = {**old, **{k: {} for k in ("mae", "blur", "ultramae", "uscl") if k not in old}}
    assert to_dict(config_from_dict(legacy)) == today(old)


@pytest.mark.parametrize("method", sorted(BUILTIN))
def test_a_config_pickles_as_its_class(method):
    cfg = build_pretrain_config(method, overrides=["train.seed=3"])
    again = pickle.loads(pickle.dumps(cfg))
    assert type(again) is type(cfg) and again == cfg


def test_as_method_config_gives_the_class_of_the_configs_method():
    mae = build_pretrain_config("mae")
    assert as_method_config(mae) is mae
    convmae = ConvMAEPretrainConfig()
    convmae.method = "mae"  # a subclass of MAE's config, named as MAE: read as MAE's class, same values
    again = as_method_config(convmae)
    assert type(again) is MAEPretrainConfig and to_dict(again) == to_dict(convmae)
    plain = as_method_config(PretrainConfig(method="uscl"))
    assert type(plain) is USCLPretrainConfig and plain.uscl == USCLConfig()


def test_a_plugin_without_a_config_class_gets_one_made_that_pickles():
    load_plugin(str(TOY))
    from toy_method import ToyConfig

    cls = config_class("toy-patch-mean")
    assert cls.__module__ == "ultrassl.methods.registry" and issubclass(cls, PretrainConfig)
    assert typing.get_type_hints(cls)["toy"] is ToyConfig
    cfg = build_pretrain_config("toy-patch-mean", overrides=["toy.sigma=2"])
    assert cfg.encoder.arch == "tiny" and cfg.toy.sigma == 2.0  # the spec's defaults, then --set
    again = pickle.loads(pickle.dumps(cfg))
    assert type(again) is cls and again == cfg
    from ultrassl.methods import registry

    assert registry.ToyPatchMeanPretrainConfig is cls


def _spec(name: str, config: type, **kw) -> MethodSpec:
    base = get_method("mae")
    return MethodSpec(
        name=name,
        summary="test",
        sections=kw.pop("sections", {"mae": MAEConfig, "blur": BlurConfig}),
        build_model=base.build_model,
        build_data=base.build_data,
        config=config,
        **kw,
    )


@dataclasses.dataclass
class _NamedWrong(MAEPretrainConfig):
    pass  # method still defaults to "mae"


@dataclasses.dataclass
class _OneSection(PretrainConfig):
    method: str = "one-section"
    mae: MAEConfig = dataclasses.field(default_factory=MAEConfig)


@pytest.mark.parametrize(
    "spec, message",
    [
        (lambda: _spec("named-wrong", _NamedWrong), "method defaults to 'mae'"),
        (
            lambda: _spec("one-section", _OneSection),
            r"has the sections \['mae'\], the spec \['mae', 'blur'\]",
        ),
        (
            lambda: _spec("one-section", _OneSection, sections={"mae": BlurConfig}),
            "_OneSection.mae is MAEConfig, the spec's section BlurConfig",
        ),
        (
            lambda: _spec("one-section", _OneSection, sections={"mae": MAEConfig}, defaults={"mae": {}}),
            "field defaults, not in defaults=",
        ),
        (lambda: _spec("not-a-class", dict), "is not a dataclass subclass of PretrainConfig"),
    ],
)
def test_a_config_class_that_does_not_match_its_spec_is_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        register_method(spec())
