"""What the benchmark evaluates: random encoders of named architectures, given weights, and registered
methods pre-trained per fold; and for each, the random twin its lift is measured against.

A lift only means something against the same network untrained (same architecture, input size and
normalisation), so every encoder that is not itself random names its twin here, once. A method's name
may carry the corpus it pre-trains on: ``deblur-mae`` pre-trains on the evaluated task's own data set,
``deblur-mae@multi`` on every data set together (POCUS, BUSI, HC18), ``deblur-mae@busi`` on BUSI alone
whatever the task (their twin is the same random network). Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ultrassl.errors import ConfigError

__all__ = [
    "CORPORA",
    "METHOD_CACHES",
    "METHOD_PRESETS",
    "SCRATCH_ARCHS",
    "EncoderChoice",
    "choose_encoders",
    "method_arch",
    "scratch_name",
]

#: the random baselines by name: the CPU presets' architectures (ViT-T/16 for the MAEs, ConvViT-T/16
#: for the ConvMAEs, ResNet-18 for USCL)
SCRATCH_ARCHS: dict[str, str] = {
    "scratch-vit": "vit_tiny_patch16_224",
    "scratch-convvit": "convvit_tiny_patch16",
    "scratch-r18": "resnet18",
}
#: the CPU preset each built-in method pre-trains with (a plugin's method runs at its own defaults)
METHOD_PRESETS: dict[str, str] = {
    "mae": "cpu-vit-t112",
    "deblur-mae": "cpu-vit-t112",
    "ultramae": "ultramae-cpu",
    "convmae": "cpu-convvit-t112",
    "deblur-convmae": "cpu-convvit-t112",
    "uscl": "uscl-cpu",
}


#: the corpora a method may name after ``@``: one data set's folder, or all of them
CORPORA: tuple[str, ...] = ("multi", "pocus", "busi", "hc18")


#: config keys of a method that name a folder its runs may share (work done once per file, reused by
#: the calibration, every fold and every corpus): UltraMAE's confidence maps
METHOD_CACHES: dict[str, str] = {"ultramae": "ultramae.confidence_cache"}


@dataclass(frozen=True)
class EncoderChoice:
    """One encoder of the benchmark.

    ``source``: ``scratch`` (random, of ``arch``), ``scratch-like`` (random, shaped like ``weights``),
    ``weights`` (a run, export or checkpoint, the same for every fold) or ``method`` (a registered
    method pre-trained on each fold's training part). ``twin``: the random encoder it is compared with
    (None for a random one). ``corpus``: what a method pre-trains on (None: the evaluated task's own
    data set; else one of :data:`CORPORA`)."""

    name: str
    source: Literal["scratch", "scratch-like", "weights", "method"]
    arch: str | None = None
    weights: str | None = None
    twin: str | None = None
    corpus: str | None = None

    @property
    def method(self) -> str:
        """The registered method's name (without ``@corpus``)."""
        return self.name.partition("@")[0]


def scratch_name(arch: str) -> str:
    """The random baseline's name for a timm architecture (``scratch-vit`` for ViT-T/16, ...)."""
    for name, a in SCRATCH_ARCHS.items():
        if a == arch:
            return name
    return f"scratch-{arch}"


def method_arch(name: str, overrides: tuple[str, ...] = ()) -> str:
    """The encoder architecture a method pre-trains: ``encoder.arch=`` among ``overrides``, else its
    preset's, else the method config's default."""
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "encoder.arch":
            return value.strip()
    preset = METHOD_PRESETS.get(name)
    if preset is not None:
        from ultrassl.config import load_preset

        arch = (load_preset(preset).get("encoder") or {}).get("arch")
        if arch:
            return str(arch)
    from ultrassl.methods import build_pretrain_config

    return build_pretrain_config(name, None, {}).encoder.arch


def _scratch(name: str) -> EncoderChoice:
    arch = SCRATCH_ARCHS.get(name) or name.removeprefix("scratch-")
    return EncoderChoice(name, "scratch", arch=arch)


def choose_encoders(
    methods: tuple[str, ...] = (),
    weights: tuple[str, ...] = (),
    pretrain_set: tuple[str, ...] = (),
    known_methods: tuple[str, ...] | None = None,
) -> list[EncoderChoice]:
    """The encoders of ``--methods`` and ``--weights``, each method's and weight's random twin included.

    ``scratch`` stands for the twins of the named methods (ViT-T alone if none is named); a ``scratch-*``
    name is that random encoder; any other name must be a registered method. Twins come first."""
    if not methods and not weights:
        raise ConfigError("name --methods or --weights (or both)")
    chosen: list[EncoderChoice] = []
    twins: dict[str, EncoderChoice] = {}
    for name in methods:
        if name == "scratch" or name.startswith("scratch-"):
            continue
        registered, at, corpus = name.partition("@")
        if known_methods is not None and registered not in known_methods:
            raise ConfigError(
                f"unknown method {registered!r}; choose from scratch, {', '.join(known_methods)}"
            )
        if at and corpus not in CORPORA:
            raise ConfigError(f"{name}: unknown corpus {corpus!r} after @; choose from {', '.join(CORPORA)}")
        twin = _scratch(scratch_name(method_arch(registered, pretrain_set)))
        twins.setdefault(twin.name, twin)
        chosen.append(EncoderChoice(name, "method", arch=twin.arch, twin=twin.name, corpus=corpus or None))
    for name in methods:
        if name.startswith("scratch-"):
            twins.setdefault(name, _scratch(name))
    if "scratch" in methods and not twins:
        twins["scratch-vit"] = _scratch("scratch-vit")
    seen: set[str] = set()
    for path in weights:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"--weights {path}: no such run folder, export folder or checkpoint file")
        stem = p.stem if p.is_file() else p.name
        name, i = stem, 2
        while name in seen or name in twins or name in METHOD_PRESETS:
            name, i = f"{stem}-{i}", i + 1
        seen.add(name)
        twin = EncoderChoice(f"scratch-like-{name}", "scratch-like", weights=str(p))
        twins[twin.name] = twin
        chosen.append(EncoderChoice(name, "weights", weights=str(p), twin=twin.name))
    return [*twins.values(), *chosen]
