"""`rlaif-ray demo`: the offline RLAIF quickstart, every stage a real job that also runs alone.

    generate-pairs -> label (AI judge, both orders) -> train-rm -> train-ppo (RM reward)
                                                    -> train-dpo (AI preferences) -> eval

Each stage writes below `<run_dir>/<n>-<job>/` with its own effective config, so any stage can be
re-run by hand with `rlaif-ray <job> --config <run_dir>/<n>-<job>/config.yaml`. Re-running the demo
resumes: stored labels are not paid again and finished stages are skipped. It ends with a table: the
trained policies' win rates against the starting policy with 95% bootstrap CIs, the reward model's
held-out accuracy, labels made and their cost, time per stage, and the files written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from ..assets import DEMO_PROMPTS
from ..config import (
    DemoJob,
    EvalJob,
    FeedbackPoolConfig,
    GeneratePairsJob,
    LabelJob,
    RewardConfig,
    TrainDPOJob,
    TrainPPOJob,
    TrainRMJob,
    save,
)
from ..jobs import JOBS

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    pass


def _stage_args(job) -> argparse.Namespace:
    """The job's own flags at their defaults, as if run from the CLI with none."""
    parser = argparse.ArgumentParser()
    job.add_arguments(parser)
    return parser.parse_args([])


class Stages:
    """Runs jobs in order, times them, skips the ones a previous demo run finished."""

    def __init__(self, root: Path, budget_s: float):
        self.root, self.budget_s, self.t0 = root, budget_s, time.perf_counter()
        self.times: dict[str, float] = {}
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def dir(self, n: int, job: str) -> Path:
        return self.root / f"{n}-{job}"

    def run(self, job: str, cfg, done_marker: Path) -> None:
        if done_marker.exists():
            log.info("demo: %s already done (%s), skipping", job, done_marker)
            self.times[job] = 0.0
            return
        module = JOBS[job].load()
        save(cfg, cfg.run_dir)
        print(f"\n=== {job}  (elapsed {self.elapsed() / 60:.1f} of {self.budget_s / 60:.0f} min) ===", flush=True)
        t0 = time.perf_counter()
        code = module.run(cfg, _stage_args(JOBS[job]))
        self.times[job] = time.perf_counter() - t0
        if code:
            raise StageFailed(f"stage {job} exited with {code}; its files are in {cfg.run_dir}; "
                              f"re-run `rlaif-ray demo` to resume")
        if not done_marker.exists():
            raise StageFailed(f"stage {job} finished but wrote no {done_marker}")


def run(cfg: DemoJob, args) -> int:
    from ..cluster import init_ray

    root = Path(cfg.run_dir)
    st = Stages(root, cfg.time_budget_min * 60)
    init_ray(cfg.ray, shared={"run_dir": str(root)})
    policy, judge = cfg.policy, cfg.judge
    gen_sampling = dataclasses.replace(cfg.sampling, n=2)
    eval_sampling = dataclasses.replace(cfg.sampling, n=1, temperature=0.0)
    pool = FeedbackPoolConfig(num_actors=1, judge=judge)
    try:
        pairs_dir = st.dir(1, "generate-pairs")
        st.run("generate-pairs", GeneratePairsJob(
            prompts=str(DEMO_PROMPTS / "train.jsonl"), run_dir=str(pairs_dir), output=str(pairs_dir / "pairs.jsonl"),
            policy=policy, max_prompts=cfg.pair_prompts, rollout=cfg.rollout, sampling=gen_sampling,
            ray=cfg.ray), pairs_dir / "pairs.jsonl")

        label_dir = st.dir(2, "label")
        prefs = label_dir / "preferences.jsonl"
        st.run("label", LabelJob(input=str(pairs_dir / "pairs.jsonl"), run_dir=str(label_dir), output=str(prefs),
                                 pool=pool, ray=cfg.ray), label_dir / "summary.json")

        rm_dir = st.dir(3, "train-rm")
        st.run("train-rm", TrainRMJob(train=str(prefs), run_dir=str(rm_dir), model=policy, learner=cfg.rm_learner,
                                      epochs=cfg.rm_epochs, ray=cfg.ray), rm_dir / "final" / "config.json")

        ppo_dir = st.dir(4, "train-ppo")
        ppo = dataclasses.replace(cfg.ppo, max_minutes=_remaining_min(st, cfg, share=0.5))
        st.run("train-ppo", TrainPPOJob(
            prompts=str(DEMO_PROMPTS / "train.jsonl"), run_dir=str(ppo_dir), policy=policy,
            reward=RewardConfig(source="rm", rm_path=str(rm_dir / "final")), ppo=ppo, rollout=cfg.rollout,
            sampling=dataclasses.replace(cfg.sampling, n=1), learner=cfg.learner, sync=cfg.sync, ray=cfg.ray),
            ppo_dir / "final" / "config.json")

        dpo_dir = st.dir(5, "train-dpo")
        stage = dataclasses.replace(cfg.dpo, data=str(prefs))
        st.run("train-dpo", TrainDPOJob(run_dir=str(dpo_dir), model=policy, stages=[stage], learner=cfg.learner,
                                        ray=cfg.ray), dpo_dir / "final" / "config.json")

        eval_dir = st.dir(6, "eval")
        st.run("eval", EvalJob(
            prompts=str(DEMO_PROMPTS / "heldout.jsonl"), run_dir=str(eval_dir), max_prompts=cfg.eval_prompts,
            policies={"start": policy.path, "ppo": str(ppo_dir / "final"), "dpo": str(dpo_dir / "final")},
            baseline="start", dtype=policy.dtype, pool=pool, rollout=cfg.rollout, sampling=eval_sampling,
            seed=cfg.seed, ray=cfg.ray), eval_dir / "results.json")
    except StageFailed as e:
        log.error("%s", e)
        return 1
    table = summary_table(st, label_dir, rm_dir, eval_dir)
    (root / "summary.txt").write_text(table + "\n")
    print("\n" + table)
    return 0


def _remaining_min(st: Stages, cfg: DemoJob, share: float) -> float:
    """Wall-clock minutes PPO may use: `share` of what the budget has left after the stages so far,
    leaving the rest for DPO and eval. At least one minute, so PPO always takes a step or two."""
    left = cfg.time_budget_min - st.elapsed() / 60
    return max(1.0, left * share)


def summary_table(st: Stages, label_dir: Path, rm_dir: Path, eval_dir: Path) -> str:
    results = json.loads((eval_dir / "results.json").read_text())
    label = json.loads((label_dir / "summary.json").read_text())
    lines = ["RLAIF demo — results", "",
             f"{'policy vs start':<18}{'win rate':>10}{'95% CI':>20}{'n':>6}"]
    for row in results.get("vs_baseline", []):
        ci = f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        lines.append(f"{row['policy']:<18}{row['win_rate']:>10.3f}{ci:>20}{row['n']:>6}")
    acc = _last_metric(rm_dir / "metrics.jsonl", "val/accuracy")
    lines += ["", f"reward model held-out accuracy: {acc:.3f}" if acc is not None else
              "reward model held-out accuracy: n/a (no held-out pairs)"]
    cost = label.get("cost_cumulative", {})
    lines.append(f"labels: {label.get('labeled')} pairs labeled by {label.get('judge')}, "
                 f"{label.get('unlabeled')} unlabeled, cost ${cost.get('cost_usd', 0.0):.4f}, "
                 f"position consistency {_fmt(label.get('position_consistency'))}")
    bias = results.get("position_bias") or {}
    if bias:
        lines.append(f"eval judge first-position rate {_fmt(bias.get('first_position_rate'))}"
                     f"{' (BIASED)' if bias.get('biased') else ''}")
    lines += ["", "time per stage:"] + [f"  {k:<16}{v / 60:6.1f} min" for k, v in st.times.items()]
    lines.append(f"  {'total':<16}{st.elapsed() / 60:6.1f} min")
    lines += ["", "files:", f"  report   {eval_dir / 'report.txt'}", f"  results  {eval_dir / 'results.json'}",
              f"  plots    {eval_dir / 'plots'}", f"  runs     {st.root}"]
    return "\n".join(lines)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _last_metric(path: Path, key: str):
    value = None
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if key in row:
                value = row[key]
    return value
