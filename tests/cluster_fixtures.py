"""Helpers shared by the real-Slurm and `ray job submit` tests: tiny label data, a function judge that
ships as a module, free ports, short temp dirs and a check that no process of a run is left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the venv running pytest; the Slurm steps and the Ray head use the same one
SBATCH_SCRIPT = REPO / "cluster" / "slurm" / "ray_on_slurm.sbatch"
LOCAL_SLURM = REPO / "cluster" / "slurm" / "local_slurm.sh"
CLUSTER_CONFIGS = REPO / "configs" / "cluster"

# The judge of the cluster tests: prefers the longer response, sure of it when one is clearly longer.
# It reads JUDGE_MARGIN from its environment, so a test also proves env vars reach the actors.
JUDGE_MODULE = '''\
import os

def prefer_longer(prompt, a, b):
    margin = int(os.environ["JUDGE_MARGIN"])
    if len(a) >= len(b) + margin:
        return 1.0
    if len(b) >= len(a) + margin:
        return 0.0
    return 0.5
'''


def write_judge(directory: Path) -> str:
    """Write the judge module into `directory`; returns its `module:function` spec."""
    (directory / "cluster_judge.py").write_text(JUDGE_MODULE)
    return "cluster_judge:prefer_longer"


def write_pairs(path: Path, n: int) -> list[dict]:
    """n pairs where response_a is the longer one in even rows and response_b in odd rows."""
    rows = []
    for i in range(n):
        short, long_ = f"ok {i}", f"a much longer and more helpful answer number {i}"
        a, b = (long_, short) if i % 2 == 0 else (short, long_)
        rows.append({"prompt": f"question {i}?", "response_a": a, "response_b": b})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def free_port_block(n: int, lo: int = 21000, hi: int = 32000) -> int:
    """First port p in [lo, hi) such that p .. p+n-1 are all free (below the ephemeral range)."""
    for base in range(lo + (os.getpid() % 97) * 20, hi - n, n):
        if all(_free(p) for p in range(base, base + n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports in [{lo}, {hi})")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def short_tmpdir(prefix: str) -> Path:
    """A temp dir directly under /tmp: Ray's unix sockets live below it and paths are capped at 107."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def terminate(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGTERM (a `ray start --block` then stops its node), SIGKILL if it is still there after `timeout_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes (other than this one) whose arguments contain `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{proc.name}: {cmd[:200]}")
    return found
