"""Per-step metrics of every training driver: JSONL (the record), TensorBoard (the view), a progress bar.

    with MetricsWriter(run_dir, total_steps, resume=None) as m:
        m.log(step, {"loss": 0.7, ...}, prefix="train")   # one JSONL row + TB scalars + bar postfix
        extra = {"step": step, "metrics_rows": m.rows}     # store with a checkpoint

`run_dir/metrics.jsonl` rows are {"step", "time", "<prefix>/<name>": value}. On resume (`resume` =
the checkpoint's extra) only the first `metrics_rows` rows are kept, so a resumed run's file reads as
if it had never stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path


def truncate_rows(path: Path, keep: int) -> None:
    """Keep only the first `keep` rows (atomic rewrite)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()][:keep]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    os.replace(tmp, path)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class PhaseTimer:
    """Wall time per named phase of one step: `with timer("train"): ...`; the seconds are in `timer.t`."""

    def __init__(self, phases: tuple[str, ...]):
        self.t = dict.fromkeys(phases, 0.0)

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        yield
        self.t[phase] += time.perf_counter() - t0


class MetricsWriter:
    """JSONL + TensorBoard + tqdm for one run directory."""

    def __init__(self, run_dir: str | Path, total_steps: int, resume: dict | None = None,
                 tensorboard: bool = True, progress: bool = True, desc: str = "train"):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        resume_step = resume["step"] if resume else None
        if resume:
            truncate_rows(self.path, resume.get("metrics_rows", 0))
        elif self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh record
        self.rows = resume.get("metrics_rows", 0) if resume else 0
        self.file = self.path.open("a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=resume_step or 0, desc=desc, dynamic_ncols=True,
                            mininterval=1.0)
        self.last_step = resume_step or 0

    def log(self, step: int, values: dict, prefix: str = "train") -> dict:
        row = {f"{prefix}/{k}": _plain(v) for k, v in values.items()}
        self.file.write(json.dumps({"step": step, "time": time.time(), **row}) + "\n")
        self.file.flush()
        self.rows += 1
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        if self.bar is not None:
            if step > self.last_step:
                self.bar.update(step - self.last_step)
            shown = {k: v for k, v in values.items() if k in ("loss", "accuracy", "reward_accuracy", "reward_mean",
                                                               "kl", "tokens_per_s")}
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        self.last_step = max(self.last_step, step)
        return row

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
