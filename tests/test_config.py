import dataclasses
import re
import typing

import pytest
import yaml

from ultrassl.config import load_preset, parse_set, preset_names, to_dict
from ultrassl.errors import ConfigError
from ultrassl.methods import build_pretrain_config, config_from_dict


def test_parse_set_nests_and_parses_yaml_values():
    assert parse_set(["a.b=1", "a.c=[2, 3]", "d=none", "e=1e-3"]) == {
        "a": {"b": 1, "c": [2, 3]},
        "d": "none",
        "e": 1e-3,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["nokey"])


def test_layers_apply_in_order():
    cfg = build_pretrain_config(
        method="deblur-mae",
        preset="tiny",
        flags={"train": {"max_steps": 7}},
        overrides=["optim.lr=0.01", "blur.sigma=2.0", "encoder.img_size=[32, 48]"],
    )
    assert cfg.method == "deblur-mae"
    assert cfg.blur.kind == "gaussian" and cfg.blur.sigma == 2.0  # method default, then --set
    assert cfg.mae.loss_on == "all" and cfg.mae.norm_pix_loss is False  # DeblurringMIM's code
    assert cfg.encoder.model_args == {"embed_dim": 32, "depth": 2, "num_heads": 2}  # preset
    assert cfg.encoder.img_size == (32, 48)
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 0.01


def test_mae_method_defaults():
    cfg = build_pretrain_config(method="mae", preset="tiny")
    assert cfg.blur.kind == "none" and cfg.mae.loss_on == "masked" and cfg.mae.norm_pix_loss


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.bacth_size=3", "unknown config key 'train.bacth_size'"),
        ("nope=1", "unknown config key 'nope'"),
        ("train.batch_size=three", "expected an integer"),
        ("train.batch_size=2.5", "expected an integer"),
        ("optim.lr=fast", "does not fit"),
        ("data.hflip=1", "expected true/false"),
        ("encoder.img_size=[64]", "expected 2 values"),
        ("train.precision=fp8", "precision"),
        ("mae.mask_ratio=1.5", "mask_ratio"),
    ],
)
def test_bad_overrides_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        build_pretrain_config(method="mae", preset="tiny", overrides=[override])


def test_unknown_method_and_preset():
    with pytest.raises(ConfigError, match="unknown method"):
        build_pretrain_config(method="simclr")
    with pytest.raises(ConfigError, match="unknown preset"):
        build_pretrain_config(preset="no-such-preset")


def test_every_preset_resolves_and_round_trips():
    names = preset_names()
    assert {"tiny", "mae-vit-b16", "deblur-mae-vit-b16", "cpu-vit-t112"} <= set(names)
    for name in names:
        cfg = build_pretrain_config(preset=name)
        plain = to_dict(cfg)
        # plain values only: survives YAML and rebuilds the same dataclass
        again = config_from_dict(yaml.safe_load(yaml.safe_dump(plain)))
        assert to_dict(again) == plain


def test_published_recipe_presets():
    deblur = build_pretrain_config(preset="deblur-mae-vit-b16")
    assert deblur.method == "deblur-mae"
    assert deblur.encoder.arch == "vit_base_patch16_224" and deblur.encoder.img_size == (224, 224)
    assert deblur.mae.mask_ratio == 0.75 and deblur.optim.base_lr == 1.5e-4
    assert deblur.optim.warmup_epochs == 40 and deblur.train.epochs == 800
    assert deblur.train.batch_size * deblur.optim.accum_steps == 256
    assert (deblur.mae.decoder_dim, deblur.mae.decoder_depth) == (512, 8)
    assert deblur.blur.sigma == 1.1


def test_preset_from_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("method: deblur-mae\ntrain: {batch_size: 3}\n")
    cfg = build_pretrain_config(preset=str(path))
    assert cfg.method == "deblur-mae" and cfg.train.batch_size == 3
    path.write_text("train: {batch_sise: 3}\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        build_pretrain_config(preset=str(path))
    assert load_preset("tiny")["encoder"]["patch_size"] == 8


@pytest.mark.parametrize(
    "method, override, message",
    [
        # validation runs on the final values, after --set: MAE with nothing masked has no loss to learn
        ("mae", "mae.mask_ratio=0", "mae.mask_ratio 0 with loss_on='masked'"),
        ("mae", "mae.decoder_heads=3", "mae.decoder_dim 32 is not divisible"),
        ("mae", "blur.kind=wobble", "blur.kind 'wobble' is not a blur"),
        ("mae", "optim.name=sgd", "optim.name must be adamw|adam"),
        ("mae", "data.decode_workers=-1", "data.decode_workers must be >= 0"),
        ("mae", "data.decode_timeout=0", "data.decode_timeout must be a finite number of seconds > 0"),
        ("mae", "train.log_interval_s=-1", "train.log_interval_s must be a finite number of seconds >= 0"),
        ("uscl", "uscl.temperature=0", "uscl.temperature must be > 0"),
        ("ultramae", "ultramae.mask_ratio_video=1.0", "ultramae.mask_ratio_video must be in"),
    ],
)
def test_every_value_is_checked_after_the_last_override(method, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_pretrain_config(method=method, preset="tiny" if method == "mae" else None, overrides=[override])


def test_a_section_the_method_does_not_read_is_an_error():
    with pytest.raises(ConfigError, match="section 'mae' is not read by method 'uscl'"):
        build_pretrain_config(method="uscl", preset="tiny")  # tiny sets mae: sizes
    with pytest.raises(ConfigError, match="section 'uscl' is not read by method 'mae'"):
        build_pretrain_config(method="mae", overrides=["uscl.temperature=0.1"])
    cfg = build_pretrain_config(method="uscl")
    assert not hasattr(cfg, "mae") and not hasattr(cfg, "blur") and cfg.uscl.temperature == 0.5


def test_a_config_saved_before_the_registry_still_loads():
    new = to_dict(build_pretrain_config(method="deblur-mae", preset="tiny"))
    legacy = {**new, "ultramae": {"tubelet": 2}, "uscl": {"temperature": 0.5}}
    assert to_dict(config_from_dict(legacy)) == new
    with pytest.raises(ConfigError, match="unknown config key 'nonsense'"):
        config_from_dict({**new, "nonsense": 1})


def test_a_bare_method_config_starts_from_the_method_defaults():
    from ultrassl.methods import config_class

    assert config_class("mae")().blur.kind == "none" and config_class("deblur-mae")().blur.sigma == 1.1
    assert config_class("uscl")().encoder.arch == "resnet18"
    assert to_dict(config_class("deblur-mae")()) == to_dict(build_pretrain_config("deblur-mae"))


def test_a_broken_plugin_is_a_one_line_error(tmp_path):
    from ultrassl.methods import load_plugin

    bad = tmp_path / "broken_plugin.py"
    bad.write_text("import no_such_module_anywhere\n")
    with pytest.raises(ConfigError, match="broken_plugin.py: importing it failed \\(ModuleNotFoundError"):
        load_plugin(str(bad))
    with pytest.raises(ConfigError, match="no such file"):
        load_plugin(str(tmp_path / "missing.py"))


def _keys_without_help(cls: type, prefix: str = "", owned=lambda c: c.__module__.startswith("ultrassl")):
    """``key (Class)`` of every leaf field of config dataclass ``cls`` (sections walked) that has no
    ``metadata["help"]``, in the classes ``owned`` picks (a user's plugin sections are the user's)."""
    hints = typing.get_type_hints(cls)
    missing = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            missing += _keys_without_help(tp, f"{prefix}{f.name}.", owned)
        elif owned(cls) and not str(f.metadata.get("help", "")).strip():
            missing.append(f"{prefix}{f.name} ({cls.__name__})")
    return missing


def test_the_help_check_walks_sections_and_names_each_key_without_help():
    @dataclasses.dataclass
    class Inner:
        a: int = 0
        b: int = dataclasses.field(default=0, metadata={"help": "b"})

    @dataclasses.dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner)
        c: str = dataclasses.field(default="", metadata={"help": " "})

    assert _keys_without_help(Outer, owned=lambda c: True) == ["inner.a (Inner)", "c (Outer)"]


def test_every_config_key_has_a_help_text():
    """The CLI's help and the documentation's "Configuration keys" page (docs/gen_reference.py) read a
    key's meaning from its field's ``metadata["help"]``: every key of every method's config class and of
    the fine-tuning options has one."""
    from ultrassl.cli import BUILTIN_METHODS
    from ultrassl.finetune.options import ClassifyConfig, SegmentConfig
    from ultrassl.methods import config_class, get_method, method_names

    roots = {f"--method {name}": get_method(name).config or config_class(name) for name in method_names()}
    assert {f"--method {name}" for name in BUILTIN_METHODS} <= set(roots)
    roots |= {"finetune classify": ClassifyConfig, "finetune segment": SegmentConfig}
    missing = [f"{where}: {key}" for where, cls in roots.items() for key in _keys_without_help(cls)]
    assert not missing, "config keys without metadata['help']:\n" + "\n".join(missing)
