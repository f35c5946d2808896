"""bench/busi_recipes.py: every recipe is a valid ``ultrassl benchmark`` command line whose changes reach
the pre-training config, each other recipe at the committed base recipe's steps (times its factor)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import busi_recipes  # noqa: E402


def test_every_recipe_is_a_benchmark_the_cli_accepts_with_its_change_in_the_config(tmp_path, monkeypatch):
    from ultrassl.benchmark import BenchmarkResult, runner
    from ultrassl.benchmark.encoders import METHOD_PRESETS
    from ultrassl.cli import main
    from ultrassl.methods import build_pretrain_config

    seen = []
    monkeypatch.setattr(
        runner,
        "run_benchmark",
        lambda opt: seen.append(opt) or BenchmarkResult(tmp_path / "b.json", {}, {}, 0, 0, 0.0),
    )
    base = busi_recipes.base_steps()
    for name, recipe in busi_recipes.RECIPES.items():
        cmd = busi_recipes.benchmark_command(name, recipe, tmp_path)
        assert cmd[:2] == ["ultrassl", "benchmark"] and main(cmd[1:]) == 0, name
        opt = seen[-1]
        assert opt.tasks == ("busi-classify",) and opt.seeds == (0, 1) and opt.img_size == recipe.img_size
        assert opt.methods == recipe.methods and opt.pretrain_set == recipe.sets
        if recipe.steps_factor is None:  # the base recipe calibrates its budget
            assert opt.pretrain_steps is None and opt.pretrain_minutes == busi_recipes.MINUTES
        else:
            assert opt.pretrain_steps == round(base * recipe.steps_factor)
        for method in {m.partition("@")[0] for m in recipe.methods}:  # every --pretrain-set item is a key
            build_pretrain_config(method, METHOD_PRESETS.get(method), None, list(recipe.sets))
    crop = build_pretrain_config(
        "deblur-mae", METHOD_PRESETS.get("deblur-mae"), None, list(busi_recipes.RECIPES["crop-0.5"].sets)
    )
    assert tuple(crop.data.crop_scale) == (0.5, 1.0)
    assert "--img-size" not in busi_recipes.benchmark_command("base", busi_recipes.RECIPES["base"], tmp_path)
