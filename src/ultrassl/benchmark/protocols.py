"""The benchmark's protocol names: the few-label points of the linear probe are ``linear@<fraction>``,
written by :func:`fraction_protocol` and read back by :func:`protocol_fraction`, so that the runner, the
record's correction families and the pages agree on which protocols are few-label points."""

from __future__ import annotations

#: the name of a few-label point starts with it (``linear@0.25``)
FEW_LABEL_PREFIX = "linear@"


def fraction_protocol(fraction: float) -> str:
    """The protocol name of the linear probe trained on ``fraction`` of the training groups."""
    return f"{FEW_LABEL_PREFIX}{fraction:g}"


def protocol_fraction(protocol: str) -> float | None:
    """The label fraction of a few-label protocol (``linear@0.25`` -> 0.25); None for the others."""
    if not protocol.startswith(FEW_LABEL_PREFIX):
        return None
    try:
        return float(protocol.removeprefix(FEW_LABEL_PREFIX))
    except ValueError:
        return None
