"""`rlaif-ray eval`: compare checkpoints on held-out prompts.

The loop: each policy answers every prompt on rollout workers (greedy by default; answers cached per
policy in `answers/`), every compared pair of answers goes to the labeling pool with the models' positions
randomised per prompt and both orders judged (verdicts land in the durable label store, so a re-run pays
for nothing twice), then the statistics (`rlaif_ray.eval`): win rates with bootstrap CIs and paired tests,
the win-rate matrix, Bradley-Terry scores, the judge's position bias, similarity to reference answers,
optional KL to a reference policy. Writes results.json, report.txt, examples.md/.jsonl, comparisons.jsonl,
plots/*.png, metrics.jsonl and TensorBoard scalars in run_dir.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..config import EvalJob, SyncConfig

log = logging.getLogger(__name__)


def resolve_policy(spec: str, dtype: str) -> str:
    """'tiny' / 'smollm2' / HF id / model dir / a training run dir (its newest complete checkpoint)."""
    from ..config import ModelConfig
    from ..learner.checkpoint import latest_checkpoint
    from ..models import resolve_model_path

    path = resolve_model_path(ModelConfig(path=spec, dtype=dtype))
    if (Path(path) / "final" / "config.json").exists():  # a finished training run
        return str(Path(path) / "final")
    if Path(path).is_dir() and not (Path(path) / "config.json").exists():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"policies: {spec} holds neither config.json nor a complete checkpoint")
        return ckpt
    return path


def generate_answers(cfg: EvalJob, prompts, run_dir: Path) -> tuple[dict[str, list], dict[str, list]]:
    """{policy: [Sample or None per prompt]} from rollout pools, one policy at a time (reusing
    answers/<name>.jsonl when it holds these prompts from the same model and sampling), and, with a KL
    reference, {policy: [sum of log pi - log ref over the answer's tokens, or nan]}. Consecutive
    policies of one architecture and tokenizer share the engine: their weights are swapped in place
    (seconds) instead of starting a new engine (half a minute on a CPU)."""
    import numpy as np
    from tqdm import tqdm

    from ..rollout import RolloutPool
    from ..rollout.engine import Sample
    from ..sync import WeightSync

    names = sorted(cfg.policies, key=lambda n: n == cfg.kl_reference)  # the KL reference goes last
    samples: dict[str, list] = {}
    own_lp: dict[str, list] = {}
    kl: dict[str, list] = {}
    pool, sync, pool_key = None, None, None
    try:
        for version, name in enumerate(tqdm(names, desc="generate", unit="policy"), start=1):
            path = resolve_policy(cfg.policies[name], cfg.dtype)
            cache = run_dir / "answers" / f"{name}.jsonl"
            cached = _read_cache(cache, path, [p.id for p in prompts], cfg)
            if cached is not None:
                samples[name] = [None if r is None else Sample(**r["sample"]) for r in cached]
                own_lp[name] = [r.get("logprobs_raw") if r else None for r in cached]
            is_ref = name == cfg.kl_reference
            needs_lp = cfg.kl_reference is not None and not is_ref and (
                name not in own_lp or any(lp is None for s, lp in zip(samples[name], own_lp[name], strict=True)
                                          if s is not None and s.token_ids))
            if name in samples and not needs_lp and not is_ref:
                log.info("%s: cached answers in %s", name, cache)
                continue
            key = _engine_key(path)
            if pool is not None and key == pool_key:
                sync.load_dir(path, version)
            else:
                if pool is not None:
                    pool.shutdown()
                pool = RolloutPool(path, cfg.rollout, seed=cfg.seed, dtype=cfg.dtype, name=f"eval-{name}")
                sync, pool_key = WeightSync(pool, SyncConfig(verify_every=0)), key
            if name not in samples:
                samples[name] = [s[0] if s else None for s in pool.generate([p.prompt for p in prompts], cfg.sampling)]
            seq_lp = pool.workers[0].sequence_logprobs  # raw log-probs under this pool's model
            if needs_lp:
                own_lp[name] = _score(seq_lp, samples[name], cfg)
            if is_ref:
                for other in names[:-1]:
                    ref = _score(seq_lp, samples[other], cfg)
                    kl[other] = [np.nan if a is None or r is None else float(np.sum(a) - np.sum(r))
                                 for a, r in zip(own_lp[other], ref, strict=True)]
                kl[name] = [0.0 if s is not None else np.nan for s in samples[name]]
            _write_cache(cache, path, prompts, samples[name], own_lp.get(name), cfg)
    finally:
        if pool is not None:
            pool.shutdown()
    return samples, kl


def _engine_key(path: str) -> tuple[str, str]:
    """What an engine must share with a model to take its weights in place: the architecture
    (config.json minus bookkeeping keys) and the tokenizer files."""
    import hashlib

    config = json.loads((Path(path) / "config.json").read_text())
    for k in ("use_cache", "_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        config.pop(k, None)
    tok = hashlib.sha256()
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja"):
        if (Path(path) / f).exists():
            tok.update(f.encode() + (Path(path) / f).read_bytes())
    if (Path(path) / "tokenizer_config.json").exists():
        tok_cfg = json.loads((Path(path) / "tokenizer_config.json").read_text())
        for k in ("local_files_only", "name_or_path", "_commit_hash"):
            tok_cfg.pop(k, None)
        tok.update(json.dumps(tok_cfg, sort_keys=True).encode())
    return json.dumps(config, sort_keys=True), tok.hexdigest()


def _score(seq_lp, samples, cfg) -> list:
    import ray

    keep = [i for i, s in enumerate(samples) if s is not None and s.token_ids]
    lps = ray.get(seq_lp.remote([samples[i].prompt_token_ids for i in keep], [samples[i].token_ids for i in keep]),
                  timeout=cfg.rollout.timeout_s) if keep else []
    out: list = [None] * len(samples)
    for i, lp in zip(keep, lps, strict=True):
        out[i] = lp
    return out


def _read_cache(path: Path, model_path: str, ids: list[str], cfg: EvalJob) -> list | None:
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta, rows = rows[0], rows[1:]
    want = {"model_path": model_path, "sampling": _sampling_key(cfg)}
    if any(meta.get(k) != v for k, v in want.items()) or [r["prompt_id"] for r in rows] != ids:
        return None
    return [r if r["sample"] is not None else None for r in rows]


def _write_cache(path: Path, model_path: str, prompts, samples, logprobs, cfg: EvalJob) -> None:
    from dataclasses import asdict

    from ..data import write_rows

    meta = {"model_path": model_path, "sampling": _sampling_key(cfg)}
    rows = [{"prompt_id": p.id, "prompt": p.prompt, "answer": s.text if s else None,
             "sample": asdict(s) if s else None, **({"logprobs_raw": lp} if logprobs else {})}
            for p, s, lp in zip(prompts, samples, logprobs or [None] * len(prompts), strict=True)]
    write_rows(path, [meta, *rows])


def _sampling_key(cfg: EvalJob) -> dict:
    from dataclasses import asdict

    return asdict(cfg.sampling)


def build_pairs(cfg: EvalJob, prompts, answers: dict[str, list[str | None]]):
    """Per compared (x, y) and prompt: the PairRecord shown to the judge with x's position randomised,
    as (pair, prompt_id, x, y, x_is_a). The pair id hashes the shown order, so identical content in the
    same order shares a label and the opposite order never reuses it."""
    import numpy as np

    from ..data import PairRecord, content_id
    from ..eval import model_pairs

    rng = np.random.default_rng(cfg.seed)
    out = []
    for x, y in model_pairs(list(cfg.policies), cfg.baseline):
        for i, p in enumerate(prompts):
            ax, ay = answers[x][i], answers[y][i]
            x_is_a = bool(rng.random() < 0.5)
            if ax is None or ay is None:  # a prompt rejected as too long by an engine
                continue
            a, b = (ax, ay) if x_is_a else (ay, ax)
            out.append((PairRecord(p.prompt, a, b, id=content_id("eval", p.prompt, a, b)), p.id, x, y, x_is_a))
    return out


def judge(cfg: EvalJob, pairs, run_dir: Path) -> tuple[list, dict]:
    """Run the judge calls not yet stored; return Comparisons and the labeling summary."""
    from tqdm import tqdm

    from ..eval import Comparison
    from ..feedback import LabelStore, config_hash, judge_id, tasks_for
    from ..feedback.labels import cost_of

    jcfg = cfg.pool.judge
    chash = config_hash(jcfg)
    store = LabelStore(run_dir)
    store.refresh()
    unique = list({pr.id: pr for pr, *_ in pairs}.values())
    tasks = tasks_for(unique, jcfg)
    todo = [t for t in tasks if not store.done(t.pair_id, chash, t.order, t.sample)]
    log.info("%d comparisons, %d judge calls, %d to run (judge %s)", len(pairs), len(tasks), len(todo), judge_id(jcfg))
    summary: dict = {}
    if todo:
        from ..feedback.pool import FeedbackPool

        bar = tqdm(total=len(todo), desc="judge", unit="call")
        before = len(store.records(chash))

        def progress() -> None:  # stored verdicts (ok or failed) since the start of this run
            store.refresh()
            bar.n = len(store.records(chash)) - before
            bar.refresh()

        pool = FeedbackPool(cfg.pool, cfg.ray, str(run_dir), chash)
        try:
            summary = pool.label(todo, progress)
        finally:
            pool.shutdown()
            bar.close()
    store.refresh()

    def p_first(pid: str, order: str) -> float | None:
        recs = [store.get(pid, chash, order, k) for k in range(jcfg.samples)]
        if any(r is None or r["status"] != "ok" for r in recs):
            return None
        return sum(r["p_first"] for r in recs) / len(recs)

    comparisons = []
    for pr, prompt_id, x, y, x_is_a in pairs:
        ab, ba = p_first(pr.id, "ab"), (p_first(pr.id, "ba") if jcfg.both_orders else None)
        comparisons.append(Comparison(prompt_id, x, y, ab if x_is_a else ba, ba if x_is_a else ab))
    records = [store.get(pr.id, chash, t, k) for pr in unique for t in ("ab", "ba") for k in range(jcfg.samples)]
    records = [r for r in records if r is not None]
    return comparisons, {"judge": judge_id(jcfg), "judge_config_hash": chash, "calls": len(tasks),
                         "calls_run": len(todo), "failed": sum(r["status"] != "ok" for r in records),
                         "cost": cost_of(records), "pool": summary}


def similarity_to_references(cfg: EvalJob, prompts, answers) -> dict | None:
    import numpy as np

    from ..eval.similarity import load_embedder, similarity

    if not cfg.embedding_model or not any(p.reference for p in prompts):
        return None
    embedder = load_embedder(cfg.embedding_model)
    keep = [i for i, p in enumerate(prompts) if p.reference]
    out = {}
    for name, ans in answers.items():
        sims = np.full(len(prompts), np.nan)
        idx = [i for i in keep if ans[i] is not None]
        sims[idx] = similarity(embedder, [ans[i] for i in idx], [prompts[i].reference for i in idx])
        out[name] = sims
    return out


def reward_scores(cfg: EvalJob, prompts, answers) -> dict | None:
    """{policy: [RM score or nan per prompt]} from one RewardScorer actor (None without reward_model)."""
    import numpy as np
    import ray

    from ..reward import RewardScorer

    if not cfg.reward_model:
        return None
    scorer = ray.remote(RewardScorer).options(num_cpus=1).remote(resolve_policy(cfg.reward_model, "fp32"))
    out = {}
    try:
        for name, ans in answers.items():
            idx = [i for i, a in enumerate(ans) if a is not None]
            scores = np.full(len(ans), np.nan)
            scores[idx] = ray.get(scorer.score.remote([prompts[i].prompt for i in idx], [ans[i] for i in idx]),
                                  timeout=cfg.rollout.timeout_s)
            out[name] = scores
    finally:
        ray.kill(scorer)
    return out


def evaluate(cfg: EvalJob) -> dict:
    """The whole eval; returns the results dict also written to run_dir/results.json."""
    import numpy as np

    from ..cluster import init_ray
    from ..data import read_prompts, write_rows
    from ..eval import format_examples, format_report, select_examples, summarise
    from ..eval.plots import plot_heatmap, plot_similarity, plot_win_rates

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    prompts = read_prompts(cfg.prompts, limit=cfg.max_prompts)
    models = list(cfg.policies)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    init_ray(cfg.ray, shared={"run_dir": str(run_dir)})
    samples, kl = generate_answers(cfg, prompts, run_dir)
    answers = {m: [s.text if s is not None else None for s in samples[m]] for m in models}
    times["generate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs = build_pairs(cfg, prompts, answers)
    comparisons, labeling = judge(cfg, pairs, run_dir)
    times["judge"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sims = similarity_to_references(cfg, prompts, answers)
    times["similarity"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rewards = reward_scores(cfg, prompts, answers)
    if rewards is not None:
        times["reward"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = summarise(models, cfg.baseline, comparisons, similarity=sims, reward=rewards,
                    kl={m: np.asarray(v, dtype=float) for m, v in kl.items()} or None,
                    n_boot=cfg.bootstrap, seed=cfg.seed)
    res["answer_length_tokens"] = {m: float(np.mean([len(s.token_ids) for s in samples[m] if s is not None] or [0]))
                                   for m in models}
    plots = run_dir / "plots"
    files = {"results": run_dir / "results.json", "report": run_dir / "report.txt",
             "examples": run_dir / "examples.md", "comparisons": run_dir / "comparisons.jsonl",
             "win_rates_png": plot_win_rates([{"label": f"{r['x']} vs {r['y']}", **r} for r in res["win_rates"]],
                                             plots / "win_rates.png"),
             "heatmap_png": plot_heatmap(np.array(res["matrix"], dtype=float), models, plots / "win_rate_matrix.png")}
    if sims:
        files["similarity_png"] = plot_similarity({m: v[~np.isnan(v)] for m, v in sims.items()},
                                                  plots / "similarity.png")
    index = {p.id: i for i, p in enumerate(prompts)}
    examples = select_examples(comparisons, answers, [str(p.prompt) for p in prompts], index,
                               [p.reference for p in prompts], k=cfg.examples)
    write_rows(run_dir / "examples.jsonl", examples)
    files["examples"].write_text(format_examples(examples))
    write_rows(files["comparisons"], [{**c.__dict__, "p_x": c.p_x, "outcome": c.outcome} for c in comparisons])
    times["stats"] = time.perf_counter() - t0
    res.update({"prompts": cfg.prompts, "n_prompts": len(prompts),
                "policies": {m: cfg.policies[m] for m in models}, "labeling": labeling,
                "seconds": {k: round(v, 2) for k, v in times.items()},
                "files": {k: str(v) for k, v in files.items()}})
    files["results"].write_text(json.dumps(res, indent=2, default=str))
    report = format_report(res) + (f"\nJudge {labeling['judge']}: {labeling['calls']} calls "
                                   f"({labeling['calls_run']} run now, {labeling['failed']} failed), "
                                   f"cost ${labeling['cost']['cost_usd']:.4f}\n")
    files["report"].write_text(report)
    _log_metrics(run_dir, res)
    return res


def _log_metrics(run_dir: Path, res: dict) -> None:
    """metrics.jsonl (one row per compared pair and per stage) and TensorBoard scalars."""
    from ..data import write_rows

    rows = [{"metric": f"win_rate/{r['x']}_vs_{r['y']}", "value": r["win_rate"], "ci": r["ci"]}
            for r in res["win_rates"]]
    rows += [{"metric": f"seconds/{k}", "value": v} for k, v in res["seconds"].items()]
    rows.append({"metric": "judge/first_position_rate", "value": res["position_bias"]["first_position_rate"]})
    write_rows(run_dir / "metrics.jsonl", rows)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; the JSONL metrics carry the same numbers
        return
    with SummaryWriter(str(run_dir / "tb")) as tb:
        for r in rows:
            tb.add_scalar(f"eval/{r['metric']}", r["value"], 0)


def run(cfg: EvalJob, args) -> int:
    res = evaluate(cfg)
    run_dir = Path(cfg.run_dir)
    print((run_dir / "report.txt").read_text(), end="")
    if res["position_bias"]["biased"]:
        print("warning: the judge prefers one position (CI excludes 0.5); win rates rely on both orders")
    print(f"eval: results.json, report.txt, examples.md, plots/ and config.yaml in {run_dir}")
    return 0 if res["n_failed"] < res["n_comparisons"] else 1
