"""Where a generated section's figures come from, in one line: the command that measured them, the commit
it ran at and the machine it ran on (read from the results JSON: ``machine`` is ``benchlib.machine_info``,
the command its ``command`` or the document's own)."""

from __future__ import annotations

from typing import Any


def machine(m: dict[str, Any]) -> str:
    """``AMD EPYC, 2 cores, no GPU, torch 2.x``: what the JSON says of the machine."""
    parts = [m.get("cpu") or "unknown CPU"]
    if m.get("cores"):
        parts.append(f"{m['cores']} cores")
    parts.append(m.get("gpu") or "no GPU")
    if m.get("torch"):
        parts.append(f"torch {m['torch']}")
    return ", ".join(parts)


def command(doc: dict[str, Any]) -> str | None:
    """The bench command recorded in ``doc`` (its own, else its machine's)."""
    return doc.get("command") or (doc.get("machine") or {}).get("command")


def made_by(doc: dict[str, Any], cmd: str | None = None, commit: str | None = None) -> str:
    """``Made by `CMD` at git REV on MACHINE (DATE).`` for one results document; ``cmd`` and ``commit``
    where the document records them elsewhere or not at all."""
    m = doc.get("machine") or {}
    cmd = cmd or command(doc)
    rev = commit or doc.get("commit") or m.get("git") or "unknown"
    when = f" ({doc['when']})" if doc.get("when") else ""
    by = f"`{cmd}`" if cmd else "a command not recorded in the JSON"
    return f"Made by {by} at git {rev} on {machine(m)}{when}."


def bench_command(doc: dict[str, Any], default: str, prefix: str = "") -> str:
    """The recorded command in backticks; a JSON written before the scripts recorded their command line
    shows the script's name and says its options are unknown."""
    cmd = command(doc)
    if cmd:
        return f"`{prefix}{cmd}`"
    return f"`{prefix}{default}` (options not recorded: the JSON predates the command line in it)"


def merged_runs(doc: dict[str, Any]) -> str:
    """The provenance of a results file merged from several invocations (``bench/real_data.py``'s:
    ``commands``, ``machines`` and the last ``machine``): every command, every commit, each machine."""
    cmds = list(dict.fromkeys(doc.get("commands") or ([command(doc)] if command(doc) else [])))
    ms = [*(doc.get("machines") or []), doc.get("machine") or {}]
    revs = list(dict.fromkeys(m.get("git") for m in ms if m.get("git")))
    kinds = list(dict.fromkeys(machine(m) for m in ms if m))
    by = ", ".join(f"`{c}`" for c in cmds) or "commands not recorded in the JSON"
    return (
        f"made by {by} at git {', '.join(revs) or 'unknown'} on {'; '.join(kinds) or 'an unrecorded machine'}"
    )
