"""The SCALING_ESTIMATES section of docs/scaling.md: what a pre-training run on 1 M and 10 M clips needs
(frame-store storage, index, decode and confidence-map hours, the manifest in every rank's memory, GPU
hours per epoch, the CPU cores and store reads that keep K GPUs fed), computed from the per-core rates
measured here (``bench/results/*.json``) and the assumptions below, every one a named constant with its
source. Nothing is measured by this module: it multiplies, and the generated text shows each product's
factors and where each factor comes from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import read_results, row_name

from .provenance import machine

# ---------------------------------------------------------------------------------------- assumptions
#: the data-set sizes estimated
CLIPS = (1_000_000, 10_000_000)
#: frames kept per clip: ``data.max_frames_per_video``'s default (``ultrassl.config.DataConfig``), spread
#: evenly over the clip (tests/test_bench_scaling_page.py checks it against the package)
FRAMES_PER_CLIP = 32
#: frames decoded per clip: the decoder reads forward from the first kept frame to the last
#: (``ultrassl.data.readers``: one contiguous decode), so spreading the kept frames over the clip decodes
#: all of it. 100 frames is a 4-second clip at 25 frames per second, the order of the POCUS clips under
#: ../shared/data (their manifest's ``n_frames`` column); echo and lung clips of a few heartbeats or breaths
#: are of that length
CLIP_FRAMES_DECODED = 100
#: bytes per stored pixel: the frame store keeps gray uint8 frames (``ultrassl.data.frame_store``)
BYTES_PER_PIXEL = 1
#: the side confidence maps are solved at: ``ultrassl.confidence.ConfidenceMaps``' ``max_side`` default
#: (checked against the package by the test); the map solve row of confidence_speed.json at that size is used
MAP_SIDE = 256
#: one GPU node: NVIDIA DGX H100 (NVIDIA's datasheet): 8 H100 GPUs, two Xeon Platinum 8480C of 56 cores
#: (112 cores), 2 TB of memory
NODE_GPUS = 8
NODE_CORES = 112
NODE_RAM_TB = 2.0
#: GPU counts of the runs estimated
GPUS = (8, 64)


@dataclass(frozen=True)
class GpuRate:
    """Images one GPU consumes per second in a ViT-B/16 MAE pre-training step."""

    name: str
    images_per_s: float
    source: str


#: published: Alpha-VL/ConvMAE issue #5 (https://github.com/Alpha-VL/ConvMAE/issues/5, the maintainer's
#: answer of 2022-05-24): MAE ViT-B pre-training on 8 RTX A6000, 128 images per GPU, 0.4084 s per iteration
#: (facebookresearch/mae's code; the MAE recipe of /work/shared/METHODS.md)
A6000_BATCH_PER_GPU = 128
A6000_SECONDS_PER_ITERATION = 0.4084
PUBLISHED_GPU = GpuRate(
    "RTX A6000, published",
    A6000_BATCH_PER_GPU / A6000_SECONDS_PER_ITERATION,
    "Alpha-VL/ConvMAE issue #5 (maintainer's answer, 2022-05-24): MAE ViT-B/16 pre-training on 8 RTX "
    f"A6000 at {A6000_BATCH_PER_GPU} images per GPU, {A6000_SECONDS_PER_ITERATION} s per iteration; "
    f"{A6000_BATCH_PER_GPU} / {A6000_SECONDS_PER_ITERATION}",
)


def assumed_gpu(loader: dict[str, Any]) -> GpuRate:
    """The current-GPU rate that ``bench/loader_rates.py`` sizes its cores for (its ``--gpu-rate``): an
    assumption of that script, not a measurement or a published figure."""
    return GpuRate(
        "current GPU, assumed",
        float(loader["gpu_rate"]),
        "assumed, not measured nor published: `bench/loader_rates.py --gpu-rate` (loader_rates.json "
        "`gpu_rate`), the rate its cores-per-GPU column is sized for",
    )


# -------------------------------------------------------------------------------------- measured rates
@dataclass(frozen=True)
class Rate:
    """One measured figure and where it comes from."""

    value: float
    unit: str
    what: str
    where: str  # the JSON file and key
    by: str  # command, commit, machine


@dataclass(frozen=True)
class Rates:
    index_ms_per_file: Rate
    rss_kib_per_clip: Rate
    decode_frames_per_s: Rate
    store_frames_per_s: Rate
    map_ms_per_frame: Rate
    frame_hw: tuple[int, int]
    loader: list[dict[str, Any]]  # loader_rates.json's rows with a rate
    loader_by: str
    gpus: tuple[GpuRate, ...]


def _by(cmd: str | None, m: dict[str, Any] | str, rev: str | None = None) -> str:
    where = m if isinstance(m, str) else machine(m)
    rev = rev or ("unknown" if isinstance(m, str) else m.get("git") or "unknown")
    return f"`{cmd or 'command not recorded'}`, git {rev}, {where}"


def rates(results: Path) -> Rates | None:
    """The measured rates the estimates rest on, or None while a results file is missing."""
    rel = read_results(results / "reliability.json")
    dec = read_results(results / "speed_decode.json")
    conf = read_results(results / "confidence_speed.json")
    load = read_results(results / "loader_rates.json")
    if not (rel.get("memory") and dec.get("decode") and conf.get("rows") and load.get("rows")):
        return None
    mem = rel["memory"]
    sizes = sorted(mem, key=lambda k: mem[k]["clips"])
    small, big = mem[sizes[0]], mem[sizes[-1]]
    mem_by = _by(
        (rel.get("commands") or {}).get("memory"),
        (rel.get("machines") or {}).get("memory") or "an unrecorded machine",
        "not recorded for this part",
    )
    slope_mib = (big["store"]["peak_rss_mib"] - small["store"]["peak_rss_mib"]) / (
        big["clips"] - small["clips"]
    )
    d, dm = dec["decode"], dec["machine"]
    dec_by = _by(dm.get("command") or (dec.get("commands") or {}).get("data"), dm)
    row = min(conf["rows"], key=lambda r: abs(r["px"] - MAP_SIDE))
    cm = conf["machine"]
    lm = load["machine"]
    return Rates(
        index_ms_per_file=Rate(
            big["index"]["cpu_ms_per_file"],
            "ms of CPU per file",
            f"`ultrassl index` on {big['clips']:,} synthetic clips",
            f"reliability.json `memory.{sizes[-1]}.index.cpu_ms_per_file`",
            mem_by,
        ),
        rss_kib_per_clip=Rate(
            slope_mib * 1024,
            "KiB of peak RSS per clip",
            f"growth of a pre-training process's peak RSS (frame store on disk) from {small['clips']:,} to "
            f"{big['clips']:,} clips: ({big['store']['peak_rss_mib']} - {small['store']['peak_rss_mib']}) MiB "
            f"/ {big['clips'] - small['clips']:,} clips",
            "reliability.json `memory.*.store.peak_rss_mib`",
            mem_by,
        ),
        decode_frames_per_s=Rate(
            d["mp4/workers0"]["frames_per_s"],
            "frames/s",
            f"decoding {d.get('source', '')} mp4s in one process ({d['mp4/frame_hw'][0]} x "
            f"{d['mp4/frame_hw'][1]} frames)",
            "speed_decode.json `decode.mp4/workers0.frames_per_s`",
            dec_by,
        ),
        store_frames_per_s=Rate(
            d["store/warm"]["frames_per_s"],
            "frames/s",
            "the same frames read back from the memory-mapped frame store, warm page cache, one process",
            "speed_decode.json `decode.store/warm.frames_per_s`",
            dec_by,
        ),
        map_ms_per_frame=Rate(
            row["ours_ms"],
            "ms per frame",
            f"one confidence map at {row['px']} px, one thread (ultrassl's solver)",
            f"confidence_speed.json `rows[px={row['px']}].ours_ms`",
            _by(cm.get("command"), cm),
        ),
        frame_hw=(int(d["mp4/frame_hw"][0]), int(d["mp4/frame_hw"][1])),
        loader=[r for r in load["rows"] if r.get("samples_per_s_per_core")],
        loader_by=_by(lm.get("command") or "python bench/loader_rates.py", lm),
        gpus=(PUBLISHED_GPU, assumed_gpu(load)),
    )


# ------------------------------------------------------------------------------------------ arithmetic
def estimate(clips: int, r: Rates) -> dict[str, float]:
    """The one-off preparation and the memory of a run on ``clips`` clips (hours are core-hours)."""
    frames = clips * FRAMES_PER_CLIP
    h, w = r.frame_hw
    return {
        "frames": frames,
        "store_bytes": frames * h * w * BYTES_PER_PIXEL,
        "index_core_h": clips * r.index_ms_per_file.value / 1000 / 3600,
        "decode_core_h": clips * CLIP_FRAMES_DECODED / r.decode_frames_per_s.value / 3600,
        "map_core_h": frames * r.map_ms_per_frame.value / 1000 / 3600,
        "rss_gib_per_rank": clips * max(r.rss_kib_per_clip.value, 0.0) / 2**20,
    }


def epoch_gpu_hours(clips: int, gpu: GpuRate) -> float:
    """GPU-hours of one pass over the kept frames (one image each, as MAE samples them)."""
    return clips * FRAMES_PER_CLIP / gpu.images_per_s / 3600


def feed(r: Rates, gpu: GpuRate, row: dict[str, Any]) -> dict[str, float]:
    """What one GPU at ``gpu``'s rate takes from the CPUs and the store with ``row``'s method: cores for
    the per-sample work, cores for the store reads, and the bytes read per second."""
    h, w = r.frame_hw
    samples = gpu.images_per_s / row.get("images_per_sample", 1.0)
    return {
        "loader_cores": samples / row["samples_per_s_per_core"],
        "read_cores": gpu.images_per_s / r.store_frames_per_s.value,
        "bytes_per_s": gpu.images_per_s * h * w * BYTES_PER_PIXEL,
    }


def nodes_to_feed(gpus: int, cores_per_gpu: float) -> tuple[int, int]:
    """(GPU nodes, nodes whose cores the data loading needs) for ``gpus`` GPUs."""
    return math.ceil(gpus / NODE_GPUS), math.ceil(gpus * cores_per_gpu / NODE_CORES)


# ------------------------------------------------------------------------------------------ rendering
def _tb(b: float) -> str:
    return f"{b / 1e12:,.1f} TB"


def _h(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:,.1f}"


def _wall(hours: float) -> str:
    """A wall time in hours, or in minutes under one hour."""
    return f"{_h(hours)} h" if hours >= 1 else f"{hours * 60:,.0f} min"


def section(results: Path) -> str | None:
    r = rates(results)
    return None if r is None else render(r)


def render(r: Rates) -> str:
    h, w = r.frame_hw
    px = f"{h} x {w} x {BYTES_PER_PIXEL} B"
    idx, dec, mp = r.index_ms_per_file.value, r.decode_frames_per_s.value, r.map_ms_per_frame.value
    rss = r.rss_kib_per_clip.value
    est = {n: estimate(n, r) for n in CLIPS}
    cols = " | ".join(f"{n:,} clips" for n in CLIPS)
    big = max(GPUS)

    def cells(fn) -> str:
        return " | ".join(fn(est[n], n) for n in CLIPS)

    def hours(key: str) -> str:
        return cells(lambda e, n: f"{_h(e[key])} core-h; {_wall(e[key] / NODE_CORES)} on {NODE_CORES} cores")

    lines = [
        "## Estimates at 1 M and 10 M clips",
        "",
        "Every figure below is a product of the measured rates and the assumptions listed under it; the "
        "second column shows the product. Core-hours assume the work splits evenly over cores (files are "
        "independent), which the 2-core machines here cannot check.",
        "",
        f"| quantity | arithmetic | {cols} |",
        "| --- | --- | " + " | ".join("---" for _ in CLIPS) + " |",
        f"| frames kept | clips x {FRAMES_PER_CLIP} | " + cells(lambda e, n: f"{e['frames']:,}") + " |",
        f"| frame store | frames x {px} | " + cells(lambda e, n: _tb(e["store_bytes"])) + " |",
        f"| index (`ultrassl index`) | clips x {idx:.2f} ms | " + hours("index_core_h") + " |",
        f"| decode | clips x {CLIP_FRAMES_DECODED} frames / {dec:,.1f} frames/s | "
        + hours("decode_core_h")
        + " |",
        f"| confidence maps (UltraMAE) | frames x {mp:.1f} ms | " + hours("map_core_h") + " |",
        f"| manifest and store index in each rank's memory | clips x {rss:.2f} KiB | "
        + cells(
            lambda e, n: (
                f"{e['rss_gib_per_rank']:,.1f} GiB; {NODE_GPUS * e['rss_gib_per_rank']:,.0f} GiB "
                f"for {NODE_GPUS} ranks of a node"
            )
        )  # fmt: skip
        + " |",
    ]
    for g in r.gpus:
        lines.append(
            f"| one epoch, {g.name} | frames / {g.images_per_s:,.0f} images/s | "
            + cells(
                lambda e, n, g=g: (
                    f"{_h(epoch_gpu_hours(n, g))} GPU-h; {_wall(epoch_gpu_hours(n, g) / big)} on {big} GPUs"
                )
            )
            + " |"
        )
    lines += ["", *ram_sentence(est), "", *feed_table(r), "", *sources(r)]
    return "\n".join(lines)


def ram_sentence(est: dict[int, dict[str, float]]) -> list[str]:
    over = [n for n in CLIPS if est[n]["store_bytes"] > NODE_RAM_TB * 1e12]
    under = [n for n in CLIPS if n not in over]
    out = []
    if under:
        out.append(
            f"At {' and '.join(f'{n:,}' for n in under)} clips the frame store fits in the page cache of a node "
            f"of {NODE_RAM_TB:g} TB, so reads after the first epoch come from memory."
        )
    if over:
        out.append(
            f"At {' and '.join(f'{n:,}' for n in over)} clips the frame store is larger than a node's "
            f"{NODE_RAM_TB:g} TB of memory: every epoch reads it again from the shared file system, at the "
            "random offsets of a shuffled sampler."
        )
    return [" ".join(out)]


def feed_table(r: Rates) -> list[str]:
    big = max(GPUS)
    head = " | ".join(f"cores per GPU at {g.images_per_s:,.0f} images/s ({g.name})" for g in r.gpus)
    lines = [
        f"### Keeping the GPUs fed: cores per GPU and nodes for {big} GPUs",
        "",
        f"Cores one GPU needs = (GPU images/s / images per sample) / the method's samples/s per core "
        f"(loader_rates.json) + GPU images/s / {r.store_frames_per_s.value:,.0f} frames/s (store reads, "
        f"warm, from the page cache: a store read from the shared file system costs the bandwidth given "
        f"under the table as well). A node has {NODE_CORES} cores for {NODE_GPUS} GPUs ({NODE_CORES / NODE_GPUS:g} per GPU); "
        f"the last columns give the nodes whose cores {big} GPUs need, against the "
        f"{math.ceil(big / NODE_GPUS)} nodes that hold them.",
        "",
        f"| method | samples/s per core | images per sample | {head} | "
        + " | ".join(f"nodes of cores for {big} GPUs ({g.name})" for g in r.gpus)
        + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in range(2 * len(r.gpus))) + " |",
    ]
    for row in r.loader:
        per = [feed(r, g, row) for g in r.gpus]
        need = [f["loader_cores"] + f["read_cores"] for f in per]
        lines.append(
            f"| {row_name(row)} | {row['samples_per_s_per_core']:,.0f} | {row.get('images_per_sample', 1.0):g} | "
            + " | ".join(f"{c:.1f}" for c in need)
            + " | "
            + " | ".join(f"{nodes_to_feed(big, c)[1]}" for c in need)
            + " |"
        )
    lines.append("")
    for g in r.gpus:
        f = feed(r, g, r.loader[0])
        lines.append(
            f"- {g.name}: each GPU reads {f['bytes_per_s'] / 1e6:,.0f} MB/s of frames ({g.images_per_s:,.0f} "
            f"images/s x {h_w(r)}); {big} GPUs read {big * f['bytes_per_s'] / 1e9:,.1f} GB/s from the store, "
            f"{NODE_GPUS * f['bytes_per_s'] / 1e9:,.2f} GB/s per node."
        )
    return lines


def h_w(r: Rates) -> str:
    h, w = r.frame_hw
    return f"{h} x {w} x {BYTES_PER_PIXEL} B"


def sources(r: Rates) -> list[str]:
    lines = [
        "### The figures used and where they come from",
        "",
        "| figure | value | what | from | made by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, rate in (
        ("index", r.index_ms_per_file),
        ("memory per clip", r.rss_kib_per_clip),
        ("decode", r.decode_frames_per_s),
        ("store read", r.store_frames_per_s),
        ("confidence map", r.map_ms_per_frame),
    ):
        lines.append(f"| {name} | {rate.value:,.2f} {rate.unit} | {rate.what} | {rate.where} | {rate.by} |")
    lines.append(
        "| loader | per method, above | each method's per-sample work on one core at 224 px | "
        f"loader_rates.json `rows[].samples_per_s_per_core` | {r.loader_by} |"
    )
    for g in r.gpus:
        lines.append(
            f"| GPU step, {g.name} | {g.images_per_s:,.0f} images/s | ViT-B/16 MAE step | {g.source} | - |"
        )
    lines += [
        "",
        "Assumptions (named constants of `bench/pages/scaling.py`, each with its source there):",
        "",
        f"- frames kept per clip: {FRAMES_PER_CLIP} (`data.max_frames_per_video`'s default, spread over the clip);",
        f"- frames decoded per clip: {CLIP_FRAMES_DECODED} (a clip of a few seconds; spreading the kept "
        "frames over the clip decodes all of it);",
        f"- frame size: {r.frame_hw[0]} x {r.frame_hw[1]} (the measured frames' size, speed_decode.json "
        f"`decode.mp4/frame_hw`), {BYTES_PER_PIXEL} byte per pixel (gray uint8 in the store); storage, reads "
        "and decode time grow with the frame's area;",
        f"- confidence maps solved at {MAP_SIDE} px (`ConfidenceMaps`' `max_side`), needed by UltraMAE only;",
        f"- a node: {NODE_GPUS} GPUs, {NODE_CORES} cores, {NODE_RAM_TB:g} TB of memory (NVIDIA DGX H100 datasheet);",
        "- memory per clip: the slope between two measured sizes; the two runs differ by little, so it is "
        "rough, and it holds the manifest rows, the store's index and the per-file bookkeeping together;",
        "- one epoch: one pass over the kept frames, one image each (MAE's frame sampling).",
    ]
    return lines
