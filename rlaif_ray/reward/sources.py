"""One reward interface for PPO, whichever source `RewardConfig.source` names:

    reward = build_reward_source(cfg.reward, ray_cfg, run_dir)
    scores = reward(prompts, responses, groups)   # list[float]; NaN where a judge call failed
    reward.close()

- rm:       the RewardScorer actor on `rm_path` (ours from train-rm or any HF sequence classifier);
- judge:    the labeling pool's judges asked for a 1-10 score, normalised to [0, 1] (d-RLAIF);
- judge_pairwise: the pool compares the samples of one prompt with each other (`groups[i]` is sample i's
            prompt), both orders; a sample's reward is its mean P(win) over its comparisons;
- function: `module:function(prompt, response) -> float`, called in the driver.
A failed judge call is NaN, never a default score: the PPO driver stops naming the sample (judge) or
leaves the sample out of the update (judge_pairwise, where one failed comparison of many is expected).
"""

from __future__ import annotations

import itertools
import math
import os

from ..config import FeedbackPoolConfig, RayConfig
from ..config.jobs import RewardConfig
from ..feedback.judge_function import load_function


class FunctionReward:
    def __init__(self, spec: str):
        self.fn = load_function(spec, "reward.function")

    def __call__(self, prompts: list, responses: list, groups: list[int] | None = None) -> list[float]:
        return [float(self.fn(p, r)) for p, r in zip(prompts, responses, strict=True)]

    def close(self) -> None:
        pass


class ModelReward:
    """Driver handle of a RewardScorer actor; every call has a timeout."""

    def __init__(self, cfg: RewardConfig):
        import ray

        from .scorer import RewardScorer

        if not cfg.rm_path:
            raise ValueError("reward.rm_path: required for reward.source=rm")
        cpus = max(1, int(cfg.num_cpus))
        self.timeout_s = cfg.timeout_s
        self.actor = ray.remote(RewardScorer).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus).remote(
            cfg.rm_path, cfg.batch_size, cfg.max_length, cfg.dtype, cpus)

    def __call__(self, prompts: list, responses: list, groups: list[int] | None = None) -> list[float]:
        import ray

        return ray.get(self.actor.score.remote(prompts, responses), timeout=self.timeout_s)

    def close(self) -> None:
        import ray

        ray.kill(self.actor)


class JudgeReward:
    """The FeedbackPool's pointwise score API; missing scores become NaN."""

    def __init__(self, cfg: RewardConfig, ray_cfg: RayConfig):
        from ..feedback.pool import FeedbackPool

        self.pool = FeedbackPool(FeedbackPoolConfig(num_actors=cfg.judge_actors, judge=cfg.judge), ray_cfg, None)

    def __call__(self, prompts: list, responses: list, groups: list[int] | None = None) -> list[float]:
        scores = self.pool.score(list(zip(prompts, responses, strict=True)))
        return [math.nan if s is None else float(s) for s in scores]

    def close(self) -> None:
        self.pool.shutdown()


class PairwiseJudgeReward:
    """source=judge_pairwise. Each pair is stored under `<run_dir>/reward-labels/` like a `label` run's
    (content ids, so a resumed run or a repeated pair pays nothing again); identical texts tie at 0.5
    without a call. A sample with no successful comparison gets NaN."""

    def __init__(self, cfg: RewardConfig, ray_cfg: RayConfig, run_dir: str):
        from ..feedback import LabelStore, config_hash
        from ..feedback.pool import FeedbackPool

        self.judge, self.schedule, self.chash = cfg.judge, cfg.pairwise_schedule, config_hash(cfg.judge)
        self.reward = cfg.pairwise_reward
        labels = os.path.join(run_dir, "reward-labels")
        self.pool = FeedbackPool(FeedbackPoolConfig(num_actors=cfg.judge_actors, judge=cfg.judge), ray_cfg, labels,
                                 self.chash)
        self.store = LabelStore(labels)

    def _pairs(self, groups: list[int]) -> list[tuple[int, int]]:
        members: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        out = []
        for idx in members.values():
            if self.schedule == "all" or len(idx) <= 3:  # circular on 3 or fewer is every pair
                out += list(itertools.combinations(idx, 2))
            else:
                out += [(idx[k], idx[(k + 1) % len(idx)]) for k in range(len(idx))]
        return out

    def __call__(self, prompts: list, responses: list, groups: list[int] | None = None) -> list[float]:
        from ..data import PairRecord
        from ..feedback.labels import n_samples, orders, p_a_of, tasks_for

        pairs = {}  # (i, j) -> the stored pair, its response_a the smaller text so its id fixes the orientation
        for i, j in self._pairs(groups if groups is not None else [0] * len(responses)):
            if responses[i] != responses[j]:
                a, b = sorted((responses[i], responses[j]))
                pairs[(i, j)] = PairRecord(prompt=prompts[i], response_a=a, response_b=b)
        self.store.refresh()
        unique = list({p.id: p for p in pairs.values()}.values())
        todo = [t for t in tasks_for(unique, self.judge) if not self.store.done(t.pair_id, self.chash, t.order, t.sample)]
        if todo:
            self.pool.label(todo)
            self.store.refresh()
        outcomes = []  # (i, j, P(i beats j)) of every comparison that succeeded
        for i, j in self._pairs(groups if groups is not None else [0] * len(responses)):
            pair = pairs.get((i, j))
            if pair is None:  # the same text twice: a tie
                p_i = 0.5
            else:
                recs = [self.store.get(pair.id, self.chash, o, k) for o in orders(self.judge)
                        for k in range(n_samples(self.judge))]
                ps = [p_a_of(r["order"], r["p_first"]) for r in recs if r is not None and r["status"] == "ok"]
                if not ps:
                    continue  # a failed comparison says nothing about either sample
                p_a = sum(ps) / len(ps)
                p_i = p_a if responses[i] == pair.response_a else 1.0 - p_a
            outcomes.append((i, j, p_i))
        if self.reward == "bradley_terry":
            return bradley_terry(len(responses), outcomes)
        wins, seen = [0.0] * len(responses), [0] * len(responses)
        for i, j, p_i in outcomes:
            wins[i] += p_i
            wins[j] += 1.0 - p_i
            seen[i] += 1
            seen[j] += 1
        return [w / n if n else math.nan for w, n in zip(wins, seen, strict=True)]

    def close(self) -> None:
        self.pool.shutdown()


def bradley_terry(n: int, outcomes: list[tuple[int, int, float]], l2: float = 0.1, iters: int = 25) -> list[float]:
    """Strengths s maximising Σ p·log σ(s_i − s_j) + (1 − p)·log σ(s_j − s_i) − (l2/2)·|s|² over the soft
    outcomes (i, j, p = P(i beats j)), by Newton's method (the objective is strictly concave). The prior
    keeps a sample that won every comparison finite and centres each group on 0. A sample in no outcome
    gets NaN (nothing is known of it)."""
    import torch

    s = torch.zeros(n, dtype=torch.float64)
    if outcomes:
        a, b, won = zip(*outcomes, strict=True)
        i, j, p = torch.tensor(a), torch.tensor(b), torch.tensor(won, dtype=torch.float64)
        for _ in range(iters):
            q = torch.sigmoid(s[i] - s[j])
            g = l2 * s
            g.index_add_(0, i, q - p)
            g.index_add_(0, j, p - q)
            w = q * (1 - q)
            h = l2 * torch.eye(n, dtype=torch.float64)
            h.index_put_((i, i), w, accumulate=True)
            h.index_put_((j, j), w, accumulate=True)
            h.index_put_((i, j), -w, accumulate=True)
            h.index_put_((j, i), -w, accumulate=True)
            step = torch.linalg.solve(h, g)
            s -= step
            if step.abs().max() < 1e-10:
                break
    seen = {k for a, b, _ in outcomes for k in (a, b)}
    return [float(v) if k in seen else math.nan for k, v in enumerate(s.tolist())]


def build_reward_source(cfg: RewardConfig, ray_cfg: RayConfig | None = None, run_dir: str | None = None):
    if cfg.source == "judge_pairwise":
        if run_dir is None:
            raise ValueError("reward.source=judge_pairwise stores its comparisons below the run_dir: pass one")
        return PairwiseJudgeReward(cfg, ray_cfg or RayConfig(), run_dir)
    if cfg.source == "function":
        if not cfg.function:
            raise ValueError("reward.function: required for reward.source=function (module:function)")
        return FunctionReward(cfg.function)
    if cfg.source == "rm":
        return ModelReward(cfg)
    return JudgeReward(cfg, ray_cfg or RayConfig())
