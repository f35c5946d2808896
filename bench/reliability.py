"""Reliability, measured: faults injected into real `ultrassl` processes, hostile files, patient data,
and memory at 1,000 vs 10,000 clips. Writes ``bench/results/reliability.json`` (``python
bench/render_docs.py`` renders ``docs/reliability.md`` from it).

Every fault is injected ``--repeats`` times at a random point (the points are seeded and recorded), and
the run is then finished with the same command a user would type again. A pre-training run counts as
bit-identical when every model tensor of its final checkpoint equals the uninterrupted run's and its logged
losses are the same; an evaluation when every report, table and prediction file is the same (the
``seconds`` of report.json aside).

Faults: SIGKILL of a single process; SIGKILL followed by a truncated or a bit-flipped ``last.pt``; a
full disk at a checkpoint (a real one: a tmpfs too small for the next save, root only), after which
space is freed; one torchrun worker SIGKILLed under ``--max-restarts``; a whole torchrun job SIGKILLed
and started again; ``finetune classify`` SIGKILLed part-way. Two nodes on this machine (two torchrun
agents, ``--nnodes 2 --nproc_per_node 1``, c10d rendezvous on localhost hosted by node 0, one run
folder), compared with the 1-node torchrun run: node 1 lost (agent and worker SIGKILLed) and its command
started again, with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` and with torch's default shared store; node
0, the rendezvous host, lost, then both commands again; one worker of node 1 SIGKILLed under
``--max-restarts``; both nodes killed and both commands again.

Memory: ``ultrassl index`` and 20 pre-training steps on synthetic manifests of short clips, three
times: every frame in RAM (``data.frame_cache=null``), the default (``auto``: RAM up to
``data.ram_cache_gb``, past it a memory-mapped store in the run folder), and a named store folder; the
peak RSS and CPU time of each process (``wait4``) and the per-file indexing time.

    python bench/reliability.py                          # everything: about 50 min on 2 cores
    python bench/reliability.py --parts faults --repeats 3
    python bench/reliability.py --parts memory --clips 1000,10000
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' media and fault helpers

from benchlib import RESULTS, ROOT, command_line, machine_info, read_results, write_results  # noqa: E402
from faults import (  # noqa: E402
    evaluation_outputs,
    kill_tree,
    logged_steps,
    png_claiming,
    worker_of_rank,
    workers_of,
)
from media_helpers import write_dicom, write_gif, write_mp4, write_png  # noqa: E402

PARTS = ("faults", "files", "tests", "memory")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
#: the pre-training every fault interrupts: tiny Deblurring MAE, a checkpoint every few steps
STEPS = 40


# ------------------------------------------------------------------------------------------ processes
def ultrassl(*args: str) -> list[str]:
    return [sys.executable, "-m", "ultrassl", *args]


def run(cmd: list[str], log: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    with log.open("a") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, timeout=timeout, text=True)


def launch(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    f = log.open("a")  # a file, not a pipe: a full pipe would block the job
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env or ENV, start_new_session=True)


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 600) -> bool:
    """Whether the run logged ``step`` while still running."""
    deadline = time.monotonic() + timeout
    while logged_steps(run_dir) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc.poll() is None and logged_steps(run_dir) >= step


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything below it: torchrun starts each worker in a session of its
    own, so killing the agent's process group would leave the workers training."""
    kill_tree(proc.pid)  # first: once the agent is dead its workers are no longer found below it
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# ------------------------------------------------------------------------------------------ comparing
def compare_runs(ref: Path, other: Path) -> dict[str, Any]:
    """Tensors of the final checkpoints that differ, and whether the logged losses are the same."""
    import torch

    from ultrassl.checkpoint import safe_load

    try:
        a, b = safe_load(ref / "checkpoints" / "last.pt"), safe_load(other / "checkpoints" / "last.pt")
    except Exception as exc:  # noqa: BLE001 - a run that left nothing loadable is a failure to report
        return {"finished": False, "identical": False, "error": str(exc)}
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]

    def losses(r: Path) -> list[str]:
        with (r / "metrics.csv").open() as f:
            return [row["loss"] for row in csv.DictReader(f)]

    same_losses = losses(ref) == losses(other)
    finished = int(b["step"]) == int(a["step"])
    return {
        "finished": finished,
        "step": int(b["step"]),
        "tensors": len(a["model"]),
        "tensors_differing": len(differ),
        "same_losses": same_losses,
        "identical": finished and not differ and same_losses,
    }


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------------ faults
def synth(work: Path) -> Path:
    manifest = work / "synth" / "manifest.csv"
    if not manifest.exists():
        from ultrassl.data.synthetic import make_synthetic_dataset

        make_synthetic_dataset(
            work / "synth", n_patients=6, clips_per_patient=1, n_frames=6, size=(64, 64), n_lesion_images=6
        )
    return manifest


def pretrain_cmd(manifest: Path, out: Path, every: int = 4) -> list[str]:
    return ultrassl(
        "pretrain", "--method", "deblur-mae", "--preset", "tiny", "--data", str(manifest), "--out", str(out),
        "--max-steps", str(STEPS), "--checkpoint-every", str(every), "--batch-size", "8",
        "--precision", "fp32", "--set", "train.log_every=1", "--set", "train.tensorboard=false",
    )  # fmt: skip


def fault_kill(manifest: Path, ref: Path, work: Path, rng: random.Random, damage: str | None) -> dict:
    """SIGKILL at a random step; ``damage`` then truncates or flips a byte of last.pt; same command."""
    out, log = work / "run", work / "log.txt"
    kill_at = rng.randint(9, STEPS - 6)  # two checkpoints exist by then (every 4 steps)
    proc = launch(pretrain_cmd(manifest, out), log)
    if not wait_for_step(proc, out, kill_at):
        kill_group(proc)
        return {"kill_at": kill_at, "identical": False, "error": "the run ended before the kill"}
    kill_group(proc)
    rec: dict[str, Any] = {"kill_at": kill_at}
    last = out / "checkpoints" / "last.pt"
    if damage == "truncate":
        size = last.stat().st_size
        keep = rng.randint(0, size - 1)
        os.truncate(last, keep)
        rec["damage"] = f"cut to {keep} of {size} bytes"
    elif damage == "flip":
        blob = bytearray(last.read_bytes())
        at = rng.randint(len(blob) // 4, len(blob) - 1)
        blob[at] ^= 1 << rng.randint(0, 7)
        last.write_bytes(bytes(blob))
        rec["damage"] = f"bit flipped at byte {at} of {len(blob)}"
    done = run(pretrain_cmd(manifest, out), log)
    text = log.read_text()
    rec["returncode"] = done.returncode
    if damage:
        rec["warned"] = "passed over" in text or "corrupt" in text
    rec["resumed"] = "resumed from" in text
    rec.update(compare_runs(ref, out))
    return rec


@contextlib.contextmanager
def tmpfs(folder: Path, size: int) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True,
                   capture_output=True)  # fmt: skip
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fault_disk_full(manifest: Path, ref: Path, work: Path, rng: random.Random, ckpt_bytes: int) -> dict:
    """A tmpfs with room for two checkpoints and a half: the third save fails with ENOSPC. The run must
    stop in one line, keep a loadable checkpoint, and finish once there is room again."""
    from ultrassl.checkpoint import safe_load

    every = rng.randint(3, 8)
    size = (int(ckpt_bytes * rng.uniform(2.2, 2.8)) // 4096 + 1) * 4096
    rec: dict[str, Any] = {"checkpoint_every": every, "tmpfs_bytes": size}
    log = work / "log.txt"
    with tmpfs(work / "disk", size) as disk:
        out = disk / "run"
        first = run(pretrain_cmd(manifest, out, every), log)
        rec["returncode"] = first.returncode
        rec["error_line"] = last_line(log)
        rec["one_line"] = "Traceback" not in log.read_text() and "No space left" in rec["error_line"]
        try:
            rec["kept_step"] = int(safe_load(out / "checkpoints" / "last.pt")["step"])
        except Exception as exc:  # noqa: BLE001
            rec["kept_step"], rec["kept_error"] = None, str(exc)
        subprocess.run(["mount", "-o", f"remount,size={8 * size}", str(disk)], check=True)  # space freed
        done = run(pretrain_cmd(manifest, out, every), log)
        rec["rerun_returncode"] = done.returncode
        rec.update(compare_runs(ref, out))
    rec["identical"] = rec["identical"] and first.returncode != 0 and rec["one_line"]
    return rec


def torchrun_cmd(manifest: Path, out: Path) -> list[str]:
    """The README's fault-tolerant command (two processes on one node)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "--max-restarts", "2", "--monitor-interval", "0.2", "-m", "ultrassl",
        "pretrain", "--method", "mae", "--preset", "tiny", "--data", str(manifest), "--out", str(out),
        "--max-steps", str(STEPS), "--checkpoint-every", "3", "--batch-size", "4", "--precision", "fp32",
        "--set", "train.log_every=1", "--set", "train.tensorboard=false",
    ]  # fmt: skip


def fault_torchrun(manifest: Path, ref: Path, work: Path, rng: random.Random, whole_job: bool) -> dict:
    out, log = work / "run", work / "log.txt"
    kill_at = rng.randint(4, STEPS - 10)
    job = launch(torchrun_cmd(manifest, out), log)
    if not wait_for_step(job, out, kill_at):
        kill_group(job)
        return {"kill_at": kill_at, "identical": False, "error": "the job ended before the kill"}
    rec: dict[str, Any] = {"kill_at": kill_at}
    if whole_job:
        kill_group(job)
        job = launch(torchrun_cmd(manifest, out), log)
    else:
        worker = worker_of_rank(job.pid, 1)
        if worker is None:
            kill_group(job)
            return {**rec, "identical": False, "error": "no rank-1 worker found"}
        os.kill(worker, signal.SIGKILL)
    try:
        job.wait(timeout=900)
    except subprocess.TimeoutExpired:
        kill_group(job)
        return {**rec, "identical": False, "error": "hung"}
    rec["returncode"] = job.returncode
    rec["resumed"] = "resumed from" in log.read_text()
    rec.update(compare_runs(ref, out))
    return rec


#: torchrun's setting that gives each rendezvous round a store of its own (docs/guide-distributed.md)
FRESH_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_node_cmd(manifest: Path, out: Path, port: int, node: int) -> list[str]:
    """Node ``node`` of two on this machine (node 0 hosts the rendezvous), training what
    :func:`torchrun_cmd` trains with the same global batch."""
    same = torchrun_cmd(manifest, out)
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
        "--rdzv_conf", f"is_host={'true' if node == 0 else 'false'}",
        "--max-restarts", "3", "--monitor-interval", "0.2", *same[same.index("-m", 2):],
    ]  # fmt: skip


def fault_two_nodes(manifest: Path, ref: Path, work: Path, rng: random.Random, kind: str) -> dict:
    """Two torchrun agents as two nodes; ``kind``: lost (node 1's agent and worker SIGKILLed, its
    command again 2 s later), lost-shared (the same with torch's default shared store), host (node 0,
    the rendezvous host, lost; node 1 left to exit; both commands again), worker (one worker of node 1
    SIGKILLed), both (both nodes killed, both commands again)."""
    out, port = work / "run", free_port()
    env = ENV if kind == "lost-shared" else {**ENV, FRESH_STORE: "1"}
    logs = [work / "node0.log", work / "node1.log"]

    def start(node: int) -> subprocess.Popen:
        return launch(two_node_cmd(manifest, out, port, node), logs[node], env)

    kill_at = rng.randint(4, STEPS - 10)
    rec: dict[str, Any] = {"kill_at": kill_at}
    nodes = [start(0), start(1)]
    if not wait_for_step(nodes[0], out, kill_at) or nodes[1].poll() is not None:
        for p in nodes:
            kill_group(p)
        return {**rec, "finished": False, "identical": False, "error": "the job ended before the kill"}
    if kind in ("lost", "lost-shared"):
        kill_group(nodes[1])
        time.sleep(2)
        nodes[1] = start(1)
    elif kind == "host":
        kill_group(nodes[0])
        try:
            nodes[1].wait(timeout=300)
        except subprocess.TimeoutExpired:
            kill_group(nodes[1])
            return {**rec, "finished": False, "identical": False, "error": "node 1 outlived the host"}
        rec["node1_returncode"] = nodes[1].returncode
        nodes = [start(0), start(1)]
    elif kind == "worker":
        os.kill(workers_of(nodes[1].pid)[0], signal.SIGKILL)
    elif kind == "both":
        for p in nodes:
            kill_group(p)
        nodes = [start(0), start(1)]
    deadline = time.monotonic() + 900
    for p in nodes:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in nodes:
                kill_group(q)
            rec["error"] = "hung"
            break
    rec["returncodes"] = [p.returncode for p in nodes]
    text = "\n".join(log.read_text() for log in logs)
    rec["resumed"] = "resumed from" in text
    rec.update(compare_runs(ref, out))
    if not rec["identical"] and "error" not in rec:
        errors = [line.strip() for line in text.splitlines() if re.search(r"\w+Error: ", line)]
        rec["error"] = errors[-1][:300] if errors else "see the nodes' logs"
    return rec


def classify_cmd(manifest: Path, weights: Path, out: Path) -> list[str]:
    return ultrassl(
        "finetune", "classify", "--weights", str(weights), "--data", str(manifest), "--out", str(out),
        "--mode", "full", "--folds", "3", "--seeds", "0", "1", "2", "--epochs", "25", "--max-frames-per-video", "2",
        "--precision", "fp32",
    )  # fmt: skip


#: runs of the evaluation below: 3 folds x 3 seeds
EVAL_RUNS = 9


def finished_runs(out: Path) -> int:
    return len(list((out / "runs").glob("*.json"))) if (out / "runs").is_dir() else 0


def fault_eval(manifest: Path, weights: Path, ref: Path, work: Path, rng: random.Random) -> dict:
    """SIGKILL once a random number of the runs have finished, a random moment into the next one."""
    out, log = work / "eval", work / "log.txt"
    after_runs, delay = rng.randint(0, EVAL_RUNS - 1), rng.uniform(0.0, 1.0)  # a run takes 1-3 s
    proc = launch(classify_cmd(manifest, weights, out), log)
    deadline = time.monotonic() + 900
    while finished_runs(out) < after_runs and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    if proc.poll() is not None:
        return {"kill_after_runs": after_runs, "identical": False, "error": "finished before the kill"}
    kill_group(proc)
    kept = finished_runs(out)
    done = run(classify_cmd(manifest, weights, out), log)
    same = done.returncode == 0 and evaluation_outputs(out) == evaluation_outputs(ref)
    return {
        "kill_after_runs": after_runs,
        "delay_s": round(delay, 2),
        "runs_kept_at_kill": kept,
        "read_back": "read back" in log.read_text(),
        "returncode": done.returncode,
        "identical": same,
        "finished": done.returncode == 0,
    }


def can_mount() -> bool:
    probe = Path("/tmp") / f"ultrassl-tmpfs-probe-{os.getpid()}"
    try:
        with tmpfs(probe, 1 << 20):
            return True
    except (subprocess.CalledProcessError, OSError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


#: the faults, by the key ``--faults`` selects them with, and how the tables name them
FAULTS = {
    "kill": "SIGKILL of the process, same command",
    "truncate": "SIGKILL, then last.pt cut short",
    "flip": "SIGKILL, then one bit of last.pt flipped",
    "disk": "disk full at a checkpoint (tmpfs), space freed, same command",
    "torchrun-worker": "torchrun --max-restarts 2: one worker SIGKILLed",
    "torchrun-job": "torchrun: the whole job SIGKILLed, same command",
    "2node-lost": f"2 nodes: node 1 lost, its command again ({FRESH_STORE}=1)",
    "2node-lost-shared": "2 nodes: node 1 lost, its command again (torch's default shared store)",
    "2node-host": "2 nodes: node 0 (rendezvous host) lost, both commands again",
    "2node-worker": "2 nodes: one worker of node 1 SIGKILLed (--max-restarts 3)",
    "2node-both": "2 nodes: both killed, both commands again",
    "eval": f"finetune classify ({EVAL_RUNS} runs: 3 folds x 3 seeds, full) SIGKILLed, same command",
}


def faults(
    work: Path, repeats: int, seed: int, only: list[str], pause_file: Path | None = None
) -> dict[str, Any]:
    rng = random.Random(seed)
    manifest = synth(work)
    out: dict[str, Any] = {}

    def reference(cmd: list[str], folder: Path) -> Path:
        if folder.exists():
            shutil.rmtree(folder)
        if run(cmd, work / f"{folder.name}.log").returncode:
            raise SystemExit(f"reference run failed: {' '.join(cmd)} (see {work / f'{folder.name}.log'})")
        return folder

    ref = reference(pretrain_cmd(manifest, work / "ref"), work / "ref")
    ckpt_bytes = (ref / "checkpoints" / "last.pt").stat().st_size
    tref = eref = None
    if any(k.startswith(("torchrun", "2node")) for k in only):
        tref = reference(torchrun_cmd(manifest, work / "torchrun-ref"), work / "torchrun-ref")
    if "eval" in only:
        eref = reference(classify_cmd(manifest, ref, work / "eval-ref"), work / "eval-ref")
    inject = {
        "kill": lambda w: fault_kill(manifest, ref, w, rng, None),
        "truncate": lambda w: fault_kill(manifest, ref, w, rng, "truncate"),
        "flip": lambda w: fault_kill(manifest, ref, w, rng, "flip"),
        "disk": lambda w: fault_disk_full(manifest, ref, w, rng, ckpt_bytes),
        "torchrun-worker": lambda w: fault_torchrun(manifest, tref, w, rng, whole_job=False),
        "torchrun-job": lambda w: fault_torchrun(manifest, tref, w, rng, whole_job=True),
        "eval": lambda w: fault_eval(manifest, ref, eref, w, rng),
        **{
            k: (lambda w, key=k: fault_two_nodes(manifest, tref, w, rng, key[6:]))
            for k in FAULTS
            if k[:6] == "2node-"
        },
    }
    for key in only:
        name = FAULTS[key]
        if key == "disk" and not can_mount():
            out[name] = {"skipped": "needs root to mount a tmpfs"}
            continue
        trials = []
        for i in range(repeats):
            while pause_file is not None and pause_file.exists():  # another benchmark's turn
                time.sleep(2)
            w = work / "trials" / f"{key}-{i}"
            if w.exists():
                shutil.rmtree(w)
            w.mkdir(parents=True)
            t0 = time.monotonic()
            rec = inject[key](w)
            rec["seconds"] = round(time.monotonic() - t0, 1)
            trials.append(rec)
            print(f"{name} [{i + 1}/{repeats}]: {json.dumps(rec)}", flush=True)
        out[name] = {"trials": trials}
    return out


# ------------------------------------------------------------------------------------------ hostile files
def hostile_files(work: Path) -> dict[str, Any]:
    """One file or entry of every hostile kind in one folder, indexed by the CLI: each must be one
    listed line with a reason, and the good file indexed."""
    data = work / "hostile"
    if data.exists():
        shutil.rmtree(data)
    (data / "sub").mkdir(parents=True)
    frames = np.stack([np.full((16, 16), 8 + 4 * i, np.uint8) for i in range(30)])
    kinds = {
        "good.png": "a good still (must be indexed)",
        "dangling.png": "a link to nothing",
        "folder_link": "a link to a folder (never followed: no cycles)",
        "loop": "a link to its own folder",
        "pipe.mp4": "a FIFO (opening it would block)",
        "bomb.png": "a PNG claiming 100,000 x 100,000 pixels",
        "big.png": "a PNG claiming 7,000 x 7,000 pixels (over --max-pixels)",
        "long.gif": "a GIF of 30 frames (over --max-frames-per-file 20)",
        "long.mp4": "an MP4 of 30 frames (over --max-frames-per-file 20)",
        "claims.dcm": "a DICOM claiming 10,000,000 frames",
        "garbage.mp4": "random bytes behind an MP4 signature",
        "cut.png": "a PNG cut in half",
        "empty.jpg": "an empty file",
        "notes.txt": "not a media file",
    }
    write_png(data / "good.png", np.full((32, 32), 90, np.uint8))
    (data / "dangling.png").symlink_to(work / "gone.png")
    (data / "folder_link").symlink_to(data / "sub")
    (data / "loop").symlink_to(data)
    os.mkfifo(data / "pipe.mp4")
    png_claiming(data / "bomb.png", 100_000, 100_000)
    png_claiming(data / "big.png", 7_000, 7_000)
    write_gif(data / "long.gif", frames, duration_ms=20)
    write_mp4(data / "long.mp4", frames, fps=25)
    write_dicom(data / "claims.dcm", frames[:2], extra={"NumberOfFrames": 10_000_000})
    (data / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(0).bytes(4000))
    good = (data / "good.png").read_bytes()
    write_png(data / "cut.png", np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))
    (data / "cut.png").write_bytes((data / "cut.png").read_bytes()[: len(good) // 2])
    (data / "empty.jpg").write_bytes(b"")
    (data / "notes.txt").write_text("not an image")
    manifest = work / "hostile.csv"
    t0 = time.monotonic()
    done = subprocess.run(
        ultrassl("index", str(data), "-o", str(manifest), "--max-frames-per-file", "20", "--file-timeout", "10"),
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    seconds = time.monotonic() - t0
    reasons: dict[str, str] = {}
    skipped_csv = manifest.with_name("hostile_skipped.csv")
    if skipped_csv.exists():
        with skipped_csv.open() as f:
            for row in csv.DictReader(f):
                reasons[Path(row["path"]).name] = row["reason"].replace(str(work), "WORK")
    indexed = []
    if manifest.exists():
        with manifest.open() as f:
            indexed = [Path(r["path"]).name for r in csv.DictReader(f)]
    rows = []
    for name, what in kinds.items():
        rows.append({"file": name, "what": what, "indexed": name in indexed, "reason": reasons.get(name)})
    # a decode that takes too long: the same MP4 under a 0 s limit
    slow = work / "slow"
    if slow.exists():
        shutil.rmtree(slow)
    slow.mkdir()
    write_mp4(slow / "slow.mp4", frames, fps=25)
    timed = subprocess.run(
        ultrassl("index", str(slow), "-o", str(work / "slow.csv"), "--file-timeout", "0"),
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    slow_reason = None
    with contextlib.suppress(OSError):
        with (work / "slow_skipped.csv").open() as f:
            slow_reason = next(csv.DictReader(f))["reason"]
    rows.append({"file": "slow.mp4", "what": "a decode over --file-timeout (0 s here)", "indexed": False,
                 "reason": slow_reason})  # fmt: skip
    ok = done.returncode == 0 and timed.returncode == 0 and "Traceback" not in done.stderr + timed.stderr
    ok = ok and all((r["reason"] is not None) != r["indexed"] for r in rows)
    ok = ok and rows[0]["indexed"]
    return {"rows": rows, "index_seconds": round(seconds, 2), "all_listed": ok}


# ------------------------------------------------------------------------------------------ tests
def tests_part() -> dict[str, Any]:
    """The fuzz and patient-data tests, run as CI runs them, with their own printed counts."""
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
         "tests/data/test_fuzz_readers.py", "tests/test_patient_data.py"],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=1800,
    )  # fmt: skip
    fuzz = {}
    # "fuzz png: 1000 cases, 17 read, 983 refused, 9.1 s" (pytest's progress dots may precede it)
    for m in re.finditer(r"fuzz (\w+): (\d+) cases, (\d+) read, (\d+) refused, ([\d.]+) s", done.stdout):
        kind, cases, read, refused, seconds = m.groups()
        fuzz[kind] = {
            "cases": int(cases),
            "read": int(read),
            "refused": int(refused),
            "seconds": float(seconds),
        }
    summary = [line for line in done.stdout.splitlines() if " passed" in line or " failed" in line]
    return {
        "returncode": done.returncode,
        "summary": summary[-1] if summary else done.stdout[-500:],
        "fuzz": fuzz,
        "seconds": round(time.monotonic() - t0, 1),
    }


# ------------------------------------------------------------------------------------------ memory
def make_clips(folder: Path, n: int, frames: int = 16, size: int = 96) -> None:
    """``n`` short MP4 clips of a speckled fan (each its own pattern), named by patient."""
    done = folder / ".complete"
    if done.exists() and int(done.read_text()) == n:
        return
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    angle = np.arctan2(xx - size / 2, yy + 4)
    fan = (np.abs(angle) < 0.6) & (np.hypot(xx - size / 2, yy + 4) < size - 4)
    rng = np.random.default_rng(0)
    for i in range(n):
        speckle = rng.gamma(1.0, 40.0, (frames + 8, size, size))
        shift = rng.integers(1, 3)
        clip = np.stack([speckle[t * shift % 8 + t // 2] for t in range(frames)])
        clip = np.where(fan, np.clip(clip, 0, 255), 0).astype(np.uint8)
        write_mp4(folder / f"p{i:05d}.mp4", clip, fps=20)
    done.write_text(str(n))


def measured(cmd: list[str], log: Path) -> dict[str, Any]:
    """Peak RSS (MiB) and CPU seconds (user + system) of the process, from wait4: neither depends on
    what else the machine is doing (the wall time, recorded too, does)."""
    t0 = time.monotonic()
    with log.open("a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")
    return {
        "returncode": proc.returncode,
        "wall_seconds": round(time.monotonic() - t0, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def memory(work: Path, sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in sizes:
        clips = work / f"clips{n}"
        t0 = time.monotonic()
        make_clips(clips, n)
        made = time.monotonic() - t0
        manifest = work / f"clips{n}.csv"
        index = measured(ultrassl("index", str(clips), "-o", str(manifest), "--group-pattern", r"^(p\d+)"),
                         work / f"index{n}.log")  # fmt: skip
        index["cpu_ms_per_file"] = round(1000 * index["cpu_seconds"] / n, 2)
        rec: dict[str, Any] = {"clips": n, "made_seconds": round(made, 1), "index": index}
        modes = {
            "ram": ["--set", "data.frame_cache=null"],
            "auto": [],
            "store": ["--set", f"data.frame_cache={work / f'store{n}'}"],
        }
        for mode, extra in modes.items():
            run_dir = work / f"run{n}-{mode}"
            for old in (run_dir, work / f"store{n}"):
                if old.exists():
                    shutil.rmtree(old)
            cmd = ultrassl(
                "pretrain", "--method", "mae", "--preset", "tiny", "--data", str(manifest), "--out",
                str(run_dir), "--max-steps", "20", "--batch-size", "32", "--precision", "fp32",
                "--set", "train.tensorboard=false", *extra,
            )  # fmt: skip
            res = measured(cmd, work / f"pretrain{n}-{mode}.log")
            store = run_dir / "frame_store" if mode == "auto" else work / f"store{n}"
            res["store_mib"] = round(folder_bytes(store) / 2**20, 1)
            rec[mode] = res
            print(f"memory {n} clips, {mode}: {json.dumps(res)}", flush=True)
        out[str(n)] = rec
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    ap.add_argument("--repeats", type=int, default=3, help="injections of each fault")
    ap.add_argument("--clips", default="1000,10000", help="data set sizes for the memory part")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "reliability")
    ap.add_argument(
        "--results",
        type=Path,
        default=RESULTS / "reliability.json",
        help="the figures' JSON (merged by part)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seeds the fault points")
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated: {', '.join(FAULTS)}")
    ap.add_argument(
        "--pause-file",
        type=Path,
        help="wait before each fault trial while this file exists (sharing the machine)",
    )
    opt = ap.parse_args()
    parts = [p for p in opt.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    opt.work.mkdir(parents=True, exist_ok=True)
    fault_keys = [k for k in opt.faults.split(",") if k]
    if set(fault_keys) - set(FAULTS):
        ap.error(f"unknown faults {sorted(set(fault_keys) - set(FAULTS))}; choose from {list(FAULTS)}")
    command = command_line(__file__)
    machine = machine_info(command=command)
    run_part = {
        "faults": lambda: faults(opt.work / "faults", opt.repeats, opt.seed, fault_keys, opt.pause_file),
        "files": lambda: hostile_files(opt.work / "files"),
        "tests": tests_part,
        "memory": lambda: memory(opt.work / "memory", [int(x) for x in opt.clips.split(",")]),
    }
    results = opt.results
    for part in parts:
        figures = run_part[part]()
        # read again just before writing: a part run alone (or by another invocation meanwhile) replaces
        # its own figures and keeps the others; written after each part, so nothing measured is lost
        res: dict[str, Any] = read_results(results)
        if part == "faults":  # some faults run alone replace their own rows
            figures = {**res.get("faults", {}), **figures}
        res[part] = figures
        res["machine"] = machine
        res.setdefault("machines", {})[part] = machine["cpu"]
        res.setdefault("commands", {})[part] = command
        write_results(results, res)
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
