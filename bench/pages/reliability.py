"""docs/reliability.md, from ``bench/reliability.py``'s JSON (the whole page)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchlib import read_results


def section(results: Path) -> str | None:
    doc = read_results(results / "reliability.json")
    return page(doc) if doc else None


def tally(trials: list[dict]) -> tuple[int, int, int]:
    return (
        len(trials),
        sum(bool(t.get("finished")) for t in trials),
        sum(bool(t.get("identical")) for t in trials),
    )


def describe(t: dict[str, Any]) -> str:
    """Where a trial's fault struck, in words."""
    out = []
    if "kill_at" in t:
        out.append(f"killed at step {t['kill_at']}")
    if "kill_after_runs" in t:
        out.append(
            f"killed {t.get('delay_s', 0):.2f} s after {t['kill_after_runs']} runs had finished "
            f"({t.get('runs_kept_at_kill')} kept on disk)"
        )
    if "damage" in t:
        out.append(t["damage"])
    if "checkpoint_every" in t:
        out.append(
            f"a checkpoint every {t['checkpoint_every']} steps on a {t['tmpfs_bytes'] / 2**20:.2f} MiB tmpfs, "
            f"the one of step {t.get('kept_step')} kept"
        )
    return ", ".join(out)


def page(res: dict[str, Any]) -> str:
    command = res.get("command", "python bench/reliability.py")
    m = res["machine"]
    lines = [
        "# Reliability, measured",
        "",
        "Written by `bench/reliability.py` (raw figures in `bench/results/reliability.json`) on "
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, git {m['git']}; each part's command and machine: "
        + "; ".join(
            f"{k}: `{res.get('commands', {}).get(k, command)}` ({v})"
            for k, v in res.get("machines", {}).items()
        )
        + ".",
        "",
        "## Summary",
        "",
        "| what | injected / tried | finished | bit-identical / as required |",
        "| --- | --- | --- | --- |",
    ]
    for name, item in res.get("faults", {}).items():
        if "skipped" in item:
            lines.append(f"| {name} | not run ({item['skipped']}) | | |")
            continue
        n, fin, same = tally(item["trials"])
        lines.append(f"| {name} | {n} | {fin} | {same} |")
    files = res.get("files")
    if files:
        listed = sum(r["reason"] is not None for r in files["rows"])
        lines.append(
            f"| hostile files and entries, one of each kind, indexed | {len(files['rows'])} kinds | "
            f"{listed} listed with a reason, {sum(r['indexed'] for r in files['rows'])} indexed | "
            f"{'yes' if files['all_listed'] else 'NO'} |"
        )
    tests = res.get("tests")
    if tests:
        cases = sum(v["cases"] for v in tests["fuzz"].values())
        lines.append(
            f"| fuzzed PNG/JPEG/GIF/MP4/DICOM files through the readers | {cases:,} cases | "
            f"{tests['summary']} | no traceback, hang or crash |"
        )
        lines.append(
            "| DICOM patient values (name, birth date, ID, institution, accession, dates) searched in "
            "every output of index, pre-train, export, fine-tune, evaluate | 8 cines x 7 values | "
            f"{'0 found' if tests['returncode'] == 0 else 'FAILED'} | must be 0 |"
        )
    mem = res.get("memory")
    if mem:
        for n, rec in mem.items():
            lines.append(
                f"| peak RSS, 20 pre-training steps on {int(n):,} clips (frames in RAM / auto / store) | | "
                f"{rec['ram']['peak_rss_mib']:.0f} / {rec['auto']['peak_rss_mib']:.0f} / "
                f"{rec['store']['peak_rss_mib']:.0f} MiB | |"
            )
    lines += ["", "## Faults, trial by trial", ""]
    for name, item in res.get("faults", {}).items():
        if "skipped" in item:
            continue
        lines.append(f"**{name}**")
        lines.append("")
        for t in item["trials"]:
            where = describe(t)
            status = "bit-identical" if t.get("identical") else f"NOT identical ({t.get('error', t)})"
            line = re.sub(r"/\S*/disk/run/", "RUN/", t.get("error_line", ""))
            extra = f"; the failed run's last line: `{line}`" if line else ""
            lines.append(f"- {where}: {status}, {t['seconds']} s{extra}")
        lines.append("")
    if files:
        lines += [
            "## Hostile files",
            "",
            f"`ultrassl index` on the folder took {files['index_seconds']} s.",
            "",
        ]
        lines += ["| entry | what it is | indexed | reason listed |", "| --- | --- | --- | --- |"]
        for r in files["rows"]:
            lines.append(
                f"| `{r['file']}` | {r['what']} | {'yes' if r['indexed'] else 'no'} | {r['reason'] or ''} |"
            )
        lines += [
            "",
            "Unreadable files and folders are covered by `tests/data/test_hostile_files.py` with the "
            "permission error simulated: this bench runs as root, which reads everything.",
            "",
        ]
    if tests:
        lines += ["## Fuzzing and patient data", "", f"`pytest -s tests/data/test_fuzz_readers.py "
                  f"tests/test_patient_data.py`: {tests['summary']} ({tests['seconds']} s).", ""]  # fmt: skip
        lines += ["| format | cases | read | refused | seconds |", "| --- | --- | --- | --- | --- |"]
        for kind, v in sorted(tests["fuzz"].items()):
            lines.append(f"| {kind} | {v['cases']} | {v['read']} | {v['refused']} | {v['seconds']} |")
        lines.append("")
    if mem:
        lines += [
            "## Memory at 1,000 vs 10,000 clips",
            "",
            "Short MP4 clips (16 frames, 96 x 96, a speckled fan; 144 KiB each decoded); `ultrassl index`, "
            "then `ultrassl pretrain --method mae --preset tiny --max-steps 20 --batch-size 32`, frames "
            "decoded in the main process. *RAM*: `--set data.frame_cache=null` (every decoded frame in the "
            "process); *auto*: the default (RAM up to `data.ram_cache_gb`, 1 GiB, past it a memory-mapped "
            "store in `RUN/frame_store`); *store*: `--set data.frame_cache=DIR` (always the store). Peak RSS "
            "and CPU seconds (user + system) from `wait4`; file pages of the store that were touched count "
            "in RSS too.",
            "",
            "| clips | index: CPU s (ms/file), peak RSS MiB | RAM: peak RSS MiB, CPU s | auto: peak RSS MiB, CPU s, store MiB | store: peak RSS MiB, CPU s, store MiB |",
            "| --- | --- | --- | --- | --- |",
        ]
        for n, rec in mem.items():
            i, r, a, st = rec["index"], rec["ram"], rec["auto"], rec["store"]
            lines.append(
                f"| {int(n):,} | {i['cpu_seconds']} ({i['cpu_ms_per_file']}), {i['peak_rss_mib']:.0f} | "
                f"{r['peak_rss_mib']:.0f}, {r['cpu_seconds']} | "
                f"{a['peak_rss_mib']:.0f}, {a['cpu_seconds']}, {a['store_mib']:.0f} | "
                f"{st['peak_rss_mib']:.0f}, {st['cpu_seconds']}, {st['store_mib']:.0f} |"
            )
        sizes = sorted(mem, key=int)
        if len(sizes) > 1:
            a, b = mem[sizes[0]], mem[sizes[-1]]
            growth = {m: b[m]["peak_rss_mib"] - a[m]["peak_rss_mib"] for m in ("ram", "auto", "store")}
            lines += [
                "",
                f"From {int(sizes[0]):,} to {int(sizes[-1]):,} clips the peak RSS grows by {growth['ram']:.0f} MiB "
                f"with every frame in RAM, by {growth['auto']:.0f} MiB with `auto` (which holds at most "
                f"`ram_cache_gb` in RAM before it spills, so its peak is bounded whatever the data set) and by "
                f"{growth['store']:.0f} MiB with the store.",
            ]
        lines += [
            "",
            "The floor of about 1 GiB is the interpreter with torch (a CUDA build: 650 MiB on import), timm "
            "and the CLI's libraries, before any data is read.",
            "",
        ]
    return "\n".join(lines)
