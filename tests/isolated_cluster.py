"""A Ray cluster of isolated nodes on one host, for tests that claim "multi-node".

The head runs with `--num-cpus=0` (it holds only the driver, as a login or head node does) and each
worker node runs in its own mount namespace with a fresh tmpfs on /dev/shm and on /tmp (`unshare -m`,
as root), so it sees only what a second machine would: the checkout and home (a cluster's shared
filesystem), never the driver's /dev/shm, /tmp or Ray temp dir. Nodes get their own loopback addresses
(127.0.0.1x) and custom resources, so a test can pin roles to nodes.

    with IsolatedCluster([Node("127.0.0.12", 2, {"train_node": 2}), Node("127.0.0.13", 2)]) as cluster:
        subprocess.run([..., f"ray.address={cluster.address}"], env=cluster.env)

Every `ray start --block` is stopped by SIGTERM to its own pid (never `ray stop`); processes of the
cluster still alive afterwards fail the test.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster_fixtures import REPO, VENV, free_port_block, processes_mentioning, short_tmpdir, terminate

SHARED_ROOT = REPO / ".test-shared"  # the only writable place every node sees: under the checkout


ISOLATE = REPO / "cluster" / "isolate_node.sh"
SHARED_PATHS = (REPO, VENV)  # what a cluster's shared filesystem would hold, wherever the checkout lies


def isolated(*argv: str) -> list[str]:
    """argv that runs `argv` in a new mount namespace with fresh /dev/shm and /tmp (the checkout kept)."""
    shares = [a for p in SHARED_PATHS for a in ("--share", str(p))]
    return [str(ISOLATE), *shares, "--", *argv]


def why_not_isolated() -> str | None:
    if os.geteuid() != 0:
        return "isolated nodes need root (mount namespaces); CI runs as root"
    marker = Path(tempfile.mkdtemp(prefix="probe-", dir="/tmp"))
    probe = subprocess.run(isolated("bash", "-c", f"test ! -e {marker} && test -d {REPO}/rlaif_ray"),
                           capture_output=True, text=True)
    marker.rmdir()
    return None if probe.returncode == 0 else f"isolate_node.sh failed ({probe.returncode}): {probe.stderr.strip()}"


@dataclass
class Node:
    ip: str  # 127.0.0.1x: one loopback address per node
    cpus: int
    resources: dict[str, float] = field(default_factory=dict)


class IsolatedCluster:
    def __init__(self, nodes: list[Node], tag: str | None = None):
        self.nodes, self.tag = nodes, tag or secrets.token_hex(3)
        self.port = free_port_block(4)
        self.address = f"127.0.0.1:{self.port}"
        self.head_dir = short_tmpdir("rh")
        self.shared = SHARED_ROOT / self.tag  # run dirs of the tests: visible on every node
        self.shared.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": self.address,
                    # node-local caches: a real node's /tmp is its own (the driver's conftest put HF_HOME there)
                    "HF_HOME": "/tmp/hf-home"}
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> IsolatedCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        ray = str(VENV / "bin" / "ray")
        p = self.port
        self.procs.append(subprocess.Popen(
            [ray, "start", "--head", "--block", f"--port={p}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
             f"--ray-client-server-port={p + 1}", f"--dashboard-agent-listen-port={p + 2}",
             f"--temp-dir={self.head_dir}", "--include-dashboard=false", "--object-store-memory=134217728"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for i, node in enumerate(self.nodes):
            # Each node's agent port differs (they share the host's port space across loopback addresses
            # only where Ray binds the node's own address).
            cmd = isolated(ray, "start", "--block", f"--address={self.address}", f"--node-ip-address={node.ip}",
                           f"--temp-dir=/tmp/ray-{self.tag}", f"--num-cpus={node.cpus}",
                           f"--dashboard-agent-listen-port={p + 3 + i}", "--object-store-memory=268435456",
                           f"--resources={json.dumps(node.resources)}")
            self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self._wait_nodes(1 + len(self.nodes))

    def _wait_nodes(self, want: int, timeout_s: float = 180) -> None:
        script = ("import ray, sys, time\n"
                  "ray.init(address=sys.argv[1], logging_level='ERROR')\n"
                  "deadline = time.time() + float(sys.argv[3])\n"
                  "while time.time() < deadline:\n"
                  "    alive = [n for n in ray.nodes() if n['Alive']]\n"
                  "    if len(alive) >= int(sys.argv[2]):\n"
                  "        sys.exit(0)\n"
                  "    time.sleep(1)\n"
                  "sys.exit(f'only {len(alive)} nodes alive')\n")
        deadline = time.monotonic() + timeout_s
        while True:
            dead = [pr.args for pr in self.procs if pr.poll() is not None]
            if dead:
                raise RuntimeError(f"a Ray node exited while the cluster started: {dead}")
            r = subprocess.run([sys.executable, "-c", script, self.address, str(want), "60"], env=self.env,
                               capture_output=True, text=True, timeout=120)
            if r.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"isolated cluster not up within {timeout_s:.0f}s: {r.stderr[-2000:]}")
            time.sleep(2)

    def stop(self) -> None:
        for pr in reversed(self.procs):  # workers first, then the head
            terminate(pr)
        self.procs = []
        shutil.rmtree(self.shared, ignore_errors=True)
        time.sleep(1)
        leftover = processes_mentioning(f"ray-{self.tag}") + processes_mentioning(str(self.head_dir))
        for line in leftover:
            try:
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        if leftover:
            raise AssertionError(f"Ray processes outlived their nodes: {leftover[:5]}")
