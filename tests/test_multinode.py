"""Two nodes on one machine: two torchrun agents (``--nnodes 2 --nproc_per_node 1``, c10d rendezvous on
localhost, ``--max-restarts 3``, one shared run folder) exercise the rendezvous, restart and shared-folder
paths of two hosts. Each run ends with weights bit-identical to a 1-node 2-process run of the same global
batch: uninterrupted, and after each fault (at a seeded random step after the first checkpoint) once it
is finished the way docs/guide-distributed.md says.

The restarts need ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (each rendezvous round gets a store of its
own): with torch's shared store a lost node started again never rejoins (see ``ultrassl.distributed``).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from faults import kill_tree, logged_steps, workers_of

from ultrassl.checkpoint import safe_load

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc"),
]

STEPS, EVERY = 40, 4
#: what the guide asks for on every node: a store of its own for each rendezvous round
FRESH_STORE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
SEED = 31  # the fault points; a failure message names the step


def _pretrain(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-m", "ultrassl", "pretrain", "--method", "mae", "--preset", "tiny", "--set", "train.log_every=1",
        "--data", str(manifest), "--precision", "fp32", "--max-steps", str(STEPS),
        "--checkpoint-every", str(EVERY), "--batch-size", "4", "--set", "train.tensorboard=false",
        "--out", str(out), *extra,
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoNodes:
    """Two torchrun agents on localhost as nodes 0 (which hosts the c10d rendezvous store) and 1."""

    def __init__(self, folder: Path, manifest: Path, env: dict[str, str], *extra: str):
        self.folder, self.out = folder, folder / "run"
        self.port = _free_port()
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
        self.args = _pretrain(manifest, self.out, *extra)
        self.procs: list[subprocess.Popen | None] = [None, None]

    def command(self, node: int) -> list[str]:
        return [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{self.port}",
            "--rdzv_conf", f"is_host={'true' if node == 0 else 'false'}",
            "--max-restarts", "3", "--monitor-interval", "0.2", *self.args,
        ]  # fmt: skip

    def log(self, node: int) -> Path:
        return self.folder / f"node{node}.log"

    def start(self, *nodes: int) -> None:
        for node in nodes or (0, 1):
            f = self.log(node).open("a")  # a file, not a pipe: a full pipe would block the job
            self.procs[node] = subprocess.Popen(
                self.command(node), env=self.env, stdout=f, stderr=f, start_new_session=True
            )

    def kill(self, *nodes: int) -> None:
        """SIGKILL the agent and the workers of each node (a lost machine)."""
        for node in nodes:
            proc = self.procs[node]
            kill_tree(proc.pid)
            proc.wait()

    def logs(self) -> str:
        return "\n".join(f"--- node {n}\n{self.log(n).read_text()[-2500:]}" for n in (0, 1))

    def wait_for_step(self, step: int) -> None:
        deadline = time.monotonic() + 120
        while logged_steps(self.out) < step and time.monotonic() < deadline:
            assert all(p.poll() is None for p in self.procs), f"ended before step {step}: {self.logs()}"
            time.sleep(0.02)
        assert logged_steps(self.out) >= step, f"step {step} not reached: {self.logs()}"

    def finish(self, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for p in self.procs:
                    kill_tree(p.pid)
                raise AssertionError(f"hung: {self.logs()}") from None
        assert [p.returncode for p in self.procs] == [0, 0], self.logs()


def _losses(run: Path) -> list[str]:
    with (run / "metrics.csv").open() as f:
        return [r["loss"] for r in csv.DictReader(f)]


def assert_bit_identical(ref: Path, run: Path, what: str) -> None:
    a, b = safe_load(ref / "checkpoints" / "last.pt"), safe_load(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == STEPS, what
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, f"{what}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    assert _losses(run) == _losses(ref), what


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(
        root / "data", n_patients=4, clips_per_patient=1, n_frames=6, size=(64, 64), n_lesion_images=4, seed=0
    )


@pytest.fixture(scope="module")
def one_node(manifest, tmp_path_factory) -> Path:
    """The reference: one node, two processes, the same global batch."""
    out = tmp_path_factory.mktemp("one-node") / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*cmd, *_pretrain(manifest, out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _kill_step(salt: int) -> int:
    return random.Random(SEED * 100 + salt).randint(EVERY + 1, STEPS - 12)


def test_two_agents_end_bit_identical_to_one_node(manifest, one_node, tmp_path):
    """The multi-node command as torch runs it by default (a shared store): the run matches one node,
    and rank 0 warns once that a lost node could not rejoin."""
    nodes = TwoNodes(tmp_path, manifest, {})
    nodes.start()
    nodes.finish()
    assert_bit_identical(one_node, nodes.out, "uninterrupted")
    warned = [
        line for n in (0, 1) for line in nodes.log(n).read_text().splitlines() if "cannot rejoin" in line
    ]
    assert len(warned) == 1 and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in warned[0], warned


def test_a_lost_node_started_again_rejoins_bit_identically(manifest, one_node, tmp_path):
    """Node 1's agent and worker SIGKILLed, its command started again two seconds later: node 0's
    agent restarts its worker, the two rendezvous anew and the run resumes from the newest checkpoint."""
    kill_at = _kill_step(1)
    nodes = TwoNodes(tmp_path, manifest, FRESH_STORE)
    nodes.start()
    nodes.wait_for_step(kill_at)
    nodes.kill(1)
    time.sleep(2)
    nodes.start(1)
    nodes.finish()
    assert "resumed from" in nodes.log(0).read_text() + nodes.log(1).read_text(), nodes.logs()
    assert_bit_identical(one_node, nodes.out, f"node 1 lost at step {kill_at}")
    assert "cannot rejoin" not in nodes.log(0).read_text()


def test_a_killed_worker_restarts_both_nodes_bit_identically(manifest, one_node, tmp_path):
    """One worker of node 1 SIGKILLed: both agents restart their workers (``--max-restarts``)."""
    kill_at = _kill_step(2)
    nodes = TwoNodes(tmp_path, manifest, FRESH_STORE)
    nodes.start()
    nodes.wait_for_step(kill_at)
    (worker,) = workers_of(nodes.procs[1].pid)
    os.kill(worker, signal.SIGKILL)
    nodes.finish()
    assert_bit_identical(one_node, nodes.out, f"a worker killed at step {kill_at}")


def test_both_nodes_killed_and_started_again_end_bit_identically(manifest, one_node, tmp_path):
    kill_at = _kill_step(3)
    nodes = TwoNodes(tmp_path, manifest, FRESH_STORE)
    nodes.start()
    nodes.wait_for_step(kill_at)
    nodes.kill(0, 1)
    nodes.start()
    nodes.finish()
    assert_bit_identical(one_node, nodes.out, f"both nodes killed at step {kill_at}")


def test_losing_the_rendezvous_host_ends_the_job_and_both_commands_again_finish_it(
    manifest, one_node, tmp_path
):
    """Node 0 hosts the c10d store: when it is lost, node 1's agent loses the rendezvous and exits
    (torch has no second store to fail over to), so one node's command again cannot finish the run;
    both commands again do, bit-identically."""
    kill_at = _kill_step(4)
    nodes = TwoNodes(tmp_path, manifest, FRESH_STORE)
    nodes.start()
    nodes.wait_for_step(kill_at)
    nodes.kill(0)
    try:
        nodes.procs[1].wait(timeout=120)
    except subprocess.TimeoutExpired:
        kill_tree(nodes.procs[1].pid)
        raise AssertionError(f"node 1 outlived the rendezvous host: {nodes.logs()}") from None
    assert nodes.procs[1].returncode != 0
    assert "RendezvousConnectionError" in nodes.log(1).read_text(), nodes.logs()
    nodes.start()
    nodes.finish()
    assert_bit_identical(one_node, nodes.out, f"node 0 lost at step {kill_at}")


def test_both_nodes_build_one_frame_store_holding_a_one_process_builds_frames(manifest, tmp_path):
    """``data.frame_cache`` on a folder both nodes see: their processes decode alternate files into
    one store, which holds the same arrays, bytes and metadata as a store one process built."""
    from store_checks import assert_same_frames

    from ultrassl import api
    from ultrassl.methods import build_pretrain_config

    fc2, fc1 = tmp_path / "fc2", tmp_path / "fc1"
    nodes = TwoNodes(tmp_path, manifest, FRESH_STORE, "--max-steps", "2", "--set", f"data.frame_cache={fc2}")
    nodes.start()
    nodes.finish()
    flags = {
        "data": {"manifest": str(manifest), "frame_cache": str(fc1)},
        "train": {"max_steps": 1, "batch_size": 8, "precision": "fp32"},
    }
    api.pretrain(
        build_pretrain_config(method="mae", preset="tiny", flags=flags), tmp_path / "one", progress=False
    )
    (built1,) = fc1.iterdir()
    (built2,) = fc2.iterdir()
    a, b = assert_same_frames(built1, built2)
    assert a.skipped == b.skipped
    record = json.loads((built2 / "build.json").read_text())
    assert record["processes"] == 2 and record["decoded_by"] == [i % 2 for i in range(record["files"])]
    assert len({r["pid"] for r in record["ranks"]}) == 2
