"""How long the command line takes to answer ``--help``: one commit against another.

Why: ``ultrassl --help`` once took seconds, because torch, scikit-learn and matplotlib were imported
before argparse ran. Each round runs every command once with each source tree (``python -m ultrassl
... --help``, a fresh process each time, the order of the two trees alternating between rounds); the
figure per command and tree is the median wall time over the rounds (process start to exit, Python's
own start-up included: what a user waits for), after one untimed run per tree that compiles its
.pyc files. The load average before and after is recorded, since other work on the machine slows
every figure.

    python bench/cli_startup.py --baseline bee90a0 [--this HEAD] [--rounds 5]

Both source trees are ``git archive`` exports of their commits (uncommitted work is not measured).

Writes ``bench/results/cli_startup.json`` (with the command, both commits and the machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, command_line, machine_info, write_results

OUT = ROOT / "bench" / "results" / "cli_startup.json"

#: the commands timed (each with --help appended)
COMMANDS = (
    (),
    ("index",),
    ("pretrain",),
    ("finetune", "classify"),
    ("finetune", "segment"),
)


def short(rev: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def export_src(rev: str, into: Path) -> Path:
    """The ``src/`` folder of commit ``rev`` (``git archive``), unpacked under ``into``."""
    into.mkdir(parents=True)
    archive = into / "src.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", "--format=tar", rev, "src"], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def time_help(src: Path, words: tuple[str, ...]) -> float:
    """Seconds of one ``python -m ultrassl WORDS --help`` with the package at ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ultrassl", *words, "--help"], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or not done.stdout.startswith("usage: ultrassl"):
        raise SystemExit(f"ultrassl {' '.join(words)} --help with {src} failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="the commit to compare with (git archive of its src/)")
    p.add_argument("--this", default="HEAD", help="the commit measured (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="runs of every command with each tree")
    p.add_argument("--out", type=Path, default=OUT, help="results JSON to write")
    a = p.parse_args()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trees = {
            name: export_src(rev, Path(tmp) / name)
            for name, rev in (("baseline", a.baseline), ("this", a.this))
        }
        for src in trees.values():  # one untimed run each: Python writes the trees' .pyc files
            time_help(src, ())
        for words in COMMANDS:
            runs: dict[str, list[float]] = {"baseline": [], "this": []}
            for r in range(a.rounds):
                order = ["baseline", "this"] if r % 2 == 0 else ["this", "baseline"]
                for name in order:
                    runs[name].append(time_help(trees[name], words))
            row = {
                "command": " ".join(["ultrassl", *words, "--help"]),
                "baseline_s": [round(t, 3) for t in runs["baseline"]],
                "this_s": [round(t, 3) for t in runs["this"]],
                "baseline_median_s": round(statistics.median(runs["baseline"]), 3),
                "this_median_s": round(statistics.median(runs["this"]), 3),
            }
            rows.append(row)
            print(
                f"{row['command']}: baseline {row['baseline_median_s']:.2f} s, "
                f"this {row['this_median_s']:.2f} s (median of {a.rounds})",
                flush=True,
            )
    doc = {
        "command": command_line(__file__),
        "commit": short(a.this),
        "baseline_commit": short(a.baseline),
        "machine": machine_info(rounds=a.rounds),
        "when": time.strftime("%Y-%m-%d"),
        "what": "wall time of `python -m ultrassl ... --help` in a fresh process (interpreter start-up "
        "included), each command run --rounds times with each source tree, the trees alternating; "
        "medians per command and tree",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    write_results(a.out, doc)


if __name__ == "__main__":
    main()
