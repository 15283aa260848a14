"""`rlaif-ray demo`: the offline RLAIF quickstart, every stage a real job that also runs alone.

    generate-pairs (policy vs a warm/rude instructed variant) -> label (SmolLM2 judge, pointwise yes/no
    on a friendly-tone rubric) -> train-rm -> train-ppo (RM reward) -> eval (judge and gold, both orders)
                                           -> train-dpo (AI preferences) ->

    --pipeline cai (Constitutional AI): critique-revise (SmolLM2 critic, tone constitution) -> train-sft ->
    generate-pairs (from the SFT policy) -> label under the constitution -> train-dpo -> eval

A gold that is not the judge (VADER sentiment) measures every step: the labels' agreement with it, the
RM's accuracy on held-out pairs by it, the policies' win rates over the start by it beside the judge's,
and the gold score against KL to the start. Each stage writes below `<run_dir>/<n>-<job>/` with its own
effective config, so any stage can be re-run by hand with `rlaif-ray <job> --config
<run_dir>/<n>-<job>/config.yaml`. Re-running the demo resumes: stored labels are not paid again and
finished stages are skipped. It ends with a table of goals, each marked met or not met, time per stage and
the files written.
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
    CritiqueReviseJob,
    DemoJob,
    EvalJob,
    FeedbackPoolConfig,
    GeneratePairsJob,
    GoldConfig,
    LabelJob,
    RewardConfig,
    TrainDPOJob,
    TrainPPOJob,
    TrainRMJob,
    TrainSFTJob,
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", choices=["rlhf", "cai"], help="which quickstart (default: the config's pipeline, "
                   "rlhf); cai = Constitutional AI")


def run(cfg: DemoJob, args) -> int:
    from ..cluster import init_ray

    if getattr(args, "pipeline", None):
        cfg = dataclasses.replace(cfg, pipeline=args.pipeline)
    if cfg.judge.scale == "contrast" and not cfg.judge.contrast_prompts and len(cfg.instructions_b) == 2:
        # the judge reads each answer after the two instructions that made the pairs, whatever they are
        cfg = dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, contrast_prompts=list(cfg.instructions_b)))
    if cfg.pipeline == "cai":
        return run_cai(cfg)
    root = Path(cfg.run_dir)
    st = Stages(root, cfg.time_budget_min * 60)
    init_ray(cfg.ray, shared={"run_dir": str(root)})
    policy = cfg.policy
    try:
        pairs = _generate_pairs(st, 1, cfg, policy)
        label_dir = _label(st, 2, cfg, pairs, cfg.judge)
        prefs = label_dir / "preferences.jsonl"

        rm_dir = st.dir(3, "train-rm")
        gold_heldout = write_gold_heldout(cfg, pairs, prefs, rm_dir / "gold_heldout.jsonl")
        st.run("train-rm", TrainRMJob(train=str(prefs), human_eval=gold_heldout, run_dir=str(rm_dir), model=policy,
                                      learner=cfg.rm_learner, epochs=cfg.rm_epochs, val_fraction=cfg.rm_val_fraction,
                                      ray=cfg.ray), rm_dir / "final" / "config.json")

        ppo_dir = st.dir(4, "train-ppo")
        ppo = dataclasses.replace(cfg.ppo, max_minutes=_remaining_min(st, cfg, share=0.5))
        st.run("train-ppo", TrainPPOJob(
            prompts=str(DEMO_PROMPTS / "train.jsonl"), run_dir=str(ppo_dir), policy=policy,
            reward=RewardConfig(source="rm", rm_path=str(rm_dir / "final")), ppo=ppo, rollout=cfg.rollout,
            sampling=dataclasses.replace(cfg.sampling, n=1), learner=cfg.learner, sync=cfg.sync,
            gold=GoldConfig(score_function=cfg.gold.score_function), ray=cfg.ray), ppo_dir / "final" / "config.json")

        dpo = _dpo(st, 5, cfg, policy, prefs)
        eval_dir = _eval(st, 6, cfg, {"start": policy.path, "ppo": str(ppo_dir / "final"), "dpo": dpo})
    except StageFailed as e:
        log.error("%s", e)
        return 1
    table = summary_table(st, label_dir, rm_dir, eval_dir)
    (root / "summary.txt").write_text(table + "\n")
    print("\n" + table)
    return 0


def run_cai(cfg: DemoJob) -> int:
    """Constitutional AI on the shipped model: the policy's answers (half of them to prompts asking for a rude
    answer, as red-team prompts elicit answers worth revising) critiqued and revised by SmolLM2 under the tone
    constitution -> SFT on the revisions -> pairs from the SFT policy (plain vs warm/rude instructed, as in the
    RLHF demo) -> labels under the constitution (each answer scored alone by its pair's principle) -> DPO from
    the SFT policy -> eval of start, SFT and DPO by the judge and by the gold (VADER)."""
    from ..cluster import init_ray

    root = Path(cfg.run_dir) / "cai"
    st = Stages(root, cfg.time_budget_min * 60)
    init_ray(cfg.ray, shared={"run_dir": str(root)})
    policy = cfg.policy
    critic = dataclasses.replace(cfg.judge, temperature=0.0)  # the judge's model writes critiques and revisions
    labeler = dataclasses.replace(cfg.judge, constitution=cfg.constitution, principles_per_pair=1)
    try:
        cr_dir = st.dir(1, "critique-revise")
        st.run("critique-revise", CritiqueReviseJob(
            prompts=str(DEMO_PROMPTS / "train.jsonl"), run_dir=str(cr_dir), max_prompts=cfg.cai_prompts,
            policy=policy, instructions=cfg.cai_instructions, rollout=cfg.rollout,
            sampling=dataclasses.replace(cfg.sampling, n=1),
            constitution=cfg.constitution, critic=FeedbackPoolConfig(num_actors=1, judge=critic),
            critique_tokens=48, revision_tokens=cfg.sampling.max_new_tokens, seed=cfg.seed, ray=cfg.ray),
            cr_dir / "sft.jsonl")

        sft_dir = st.dir(2, "train-sft")
        st.run("train-sft", TrainSFTJob(data=str(cr_dir / "sft.jsonl"), run_dir=str(sft_dir), model=policy,
                                        learner=cfg.learner, epochs=cfg.sft_epochs, val_fraction=0.1, ray=cfg.ray),
               sft_dir / "final" / "config.json")
        sft_policy = dataclasses.replace(policy, path=str(sft_dir / "final"))

        pairs = _generate_pairs(st, 3, cfg, sft_policy)
        label_dir = _label(st, 4, cfg, pairs, labeler)
        dpo = _dpo(st, 5, cfg, sft_policy, label_dir / "preferences.jsonl")
        eval_dir = _eval(st, 6, cfg, {"start": policy.path, "sft": sft_policy.path, "dpo": dpo})
    except StageFailed as e:
        log.error("%s", e)
        return 1
    table = summary_table(st, label_dir, None, eval_dir, revisions=revision_gain(cfg, cr_dir / "sft.jsonl"),
                          title="Constitutional AI demo")
    (root / "summary.txt").write_text(table + "\n")
    print("\n" + table)
    return 0


def _generate_pairs(st: Stages, step: int, cfg: DemoJob, policy) -> Path:
    """Pairs from `policy`: a plain answer and one under an `instructions_b` instruction per prompt."""
    d = st.dir(step, "generate-pairs")
    st.run("generate-pairs", GeneratePairsJob(
        prompts=str(DEMO_PROMPTS / "train.jsonl"), run_dir=str(d), output=str(d / "pairs.jsonl"), policy=policy,
        instructions_b=cfg.instructions_b, max_prompts=cfg.pair_prompts, rollout=cfg.rollout,
        sampling=dataclasses.replace(cfg.sampling, n=1), ray=cfg.ray), d / "pairs.jsonl")
    return d / "pairs.jsonl"


def _label(st: Stages, step: int, cfg: DemoJob, pairs: Path, judge) -> Path:
    """AI labels of `pairs` by `judge` (one pool actor), their agreement with the gold in the summary."""
    d = st.dir(step, "label")
    st.run("label", LabelJob(input=str(pairs), run_dir=str(d), output=str(d / "preferences.jsonl"),
                             pool=FeedbackPoolConfig(num_actors=1, judge=judge), gold=cfg.gold, ray=cfg.ray),
           d / "summary.json")
    return d


def _dpo(st: Stages, step: int, cfg: DemoJob, model, prefs: Path) -> str:
    """DPO from `model` on the AI preferences; the final checkpoint's path."""
    d = st.dir(step, "train-dpo")
    st.run("train-dpo", TrainDPOJob(run_dir=str(d), model=model, stages=[dataclasses.replace(cfg.dpo, data=str(prefs))],
                                    learner=cfg.learner, ray=cfg.ray), d / "final" / "config.json")
    return str(d / "final")


def _eval(st: Stages, step: int, cfg: DemoJob, policies: dict[str, str]) -> Path:
    """Every policy against the start on the held-out prompts (greedy), by the judge and by the gold."""
    d = st.dir(step, "eval")
    st.run("eval", EvalJob(
        prompts=str(DEMO_PROMPTS / "heldout.jsonl"), run_dir=str(d), max_prompts=cfg.eval_prompts, policies=policies,
        baseline="start", kl_reference="start", dtype=cfg.policy.dtype,
        pool=FeedbackPoolConfig(num_actors=1, judge=cfg.judge), gold=cfg.gold, rollout=cfg.rollout,
        sampling=dataclasses.replace(cfg.sampling, n=1, temperature=0.0), seed=cfg.seed, ray=cfg.ray),
        d / "results.json")
    return d


def revision_gain(cfg: DemoJob, sft_path: Path) -> tuple[float | None, int]:
    """Share of critique-revise's rows whose final revision the gold scores above the original answer, among
    the rows where the gold tells them apart by its margin; and that count."""
    from ..data import PairRecord
    from ..eval.gold import gold_preferences

    rows = [json.loads(line) for line in sft_path.read_text().splitlines()]
    pairs = [PairRecord(r["prompt"], r["completion"], r["original"]) for r in rows]
    decided = [g for g in gold_preferences(cfg.gold, pairs) if g is not None and g != 0.5]
    return (sum(g > 0.5 for g in decided) / len(decided) if decided else None), len(decided)


def _remaining_min(st: Stages, cfg: DemoJob, share: float) -> float:
    """Wall-clock minutes PPO may use: `share` of what the budget has left after the stages so far,
    leaving the rest for DPO and eval. At least one minute, so PPO always takes a step or two."""
    left = cfg.time_budget_min - st.elapsed() / 60
    return max(1.0, left * share)


def write_gold_heldout(cfg: DemoJob, pairs_path: Path, prefs_path: Path, out: Path) -> str | None:
    """The gold's preferences on the pairs train-rm holds out (the same id split), where the gold decides:
    the RM's accuracy on them is its accuracy by the gold on pairs it never saw. None without such pairs."""
    from ..data import read_pairs, read_preferences, split_by_id, write_rows
    from ..eval.gold import gold_preferences

    if not prefs_path.exists() or not cfg.gold.enabled:
        return None
    _, val = split_by_id(read_preferences(prefs_path), cfg.rm_val_fraction, cfg.rm_learner.seed)
    held = {r.id for r in val}
    pairs = [p for p in read_pairs(pairs_path) if p.id in held]
    rows = [{"prompt": p.prompt, "chosen": p.response_a if g > 0.5 else p.response_b,
             "rejected": p.response_b if g > 0.5 else p.response_a, "id": p.id}
            for p, g in zip(pairs, gold_preferences(cfg.gold, pairs), strict=True) if g is not None and g != 0.5]
    if not rows:
        return None
    write_rows(out, rows)
    return str(out)


GOALS = {"agreement": 0.70, "rm_accuracy": 0.65}


def summary_table(st: Stages, label_dir: Path, rm_dir: Path | None, eval_dir: Path,
                  revisions: tuple[float | None, int] | None = None, title: str = "RLAIF demo") -> str:
    """Every goal of the demo marked met / not met, as it came out, then costs, time and files. `rm_dir`
    None: no reward model (the CAI pipeline); `revisions`: critique-revise's revision gain by the gold."""
    results = json.loads((eval_dir / "results.json").read_text())
    label = json.loads((label_dir / "summary.json").read_text())
    gold = results.get("gold", {})
    agree = (label.get("gold") or {}).get("agreement")
    lines = [f"{title} — results (goal: met / not met, as measured)", "",
             f"{'':<44}{'value':>8}{'95% CI':>18}{'n':>5}  goal"]
    if revisions is not None:
        gain, n = revisions
        lines.append(_goal_row("revision beats original, by the gold", gain, None, n, "> 0.5",
                               gain is not None and gain > 0.5))
    lines.append(_goal_row("judge-gold agreement on the demo's pairs", agree, None, (label.get("gold") or {}).get("n"),
                           f">= {GOALS['agreement']}", agree is not None and agree >= GOALS["agreement"]))
    if rm_dir is not None:
        acc = _last_metric(rm_dir / "metrics.jsonl", "human/accuracy")
        lines.append(_goal_row("RM held-out accuracy by the gold", acc, None, None, f">= {GOALS['rm_accuracy']}",
                               acc is not None and acc >= GOALS["rm_accuracy"]))
    for by, rows in (("gold", gold.get("vs_baseline", [])), ("judge", results.get("vs_baseline", []))):
        for row in rows:
            lines.append(_goal_row(f"{row['policy']} win rate over start, by the {by}", row["win_rate"],
                                   (row["ci_low"], row["ci_high"]), row["n"], "CI low > 0.5", row["ci_low"] > 0.5))
    judge_gold = gold.get("judge_agreement", {})
    lines += ["", f"eval: the judge agrees with the gold on {_fmt(judge_gold.get('agreement'))} of the "
              f"{judge_gold.get('n', 0)} comparisons the gold decides (kappa {_fmt(judge_gold.get('kappa'))})"]
    for m, sc in gold.get("score", {}).items():
        kl = results.get("kl", {}).get(m, {}).get("mean")
        lines.append(f"  {m:<8} gold score {sc['mean']:+.3f}  KL to start {_fmt(kl)}")
    cost = label.get("cost_cumulative", {})
    lines.append(f"labels: {label.get('labeled')} pairs labeled by {label.get('judge')}, "
                 f"{label.get('unlabeled')} unlabeled, cost ${cost.get('cost_usd', 0.0):.4f}")
    lines += ["", "time per stage:"] + [f"  {k:<16}{v / 60:6.1f} min" for k, v in st.times.items()]
    lines.append(f"  {'total':<16}{st.elapsed() / 60:6.1f} min")
    lines += ["", "files:", f"  report   {eval_dir / 'report.txt'}", f"  results  {eval_dir / 'results.json'}",
              f"  plots    {eval_dir / 'plots'} (gold_vs_kl.png: gold score against KL to the start)",
              f"  runs     {st.root}"]
    return "\n".join(lines)


def _goal_row(name: str, value, ci, n, goal: str, met: bool) -> str:
    ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return (f"{name:<44}{_fmt(value):>8}{ci_text:>18}{n if n is not None else '':>5}  {goal}: "
            f"{'met' if met else 'NOT MET'}")


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
