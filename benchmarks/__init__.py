"""`rlaif-ray bench <name> --json PATH [--quick]`: each benchmark is `benchmarks/bench_<name>.py`
exposing `add_arguments(parser)` and `run(args) -> int`; it prints a table and writes JSON."""

from __future__ import annotations

import importlib

BENCHES = {
    "rollout": "vLLM rollout workers vs transformers generate (tokens/s)",
    "label": "labeling pool vs a one-at-a-time loop against the API fake (labels/s)",
    "learner": "our DPO learner group vs TRL DPOTrainer (tokens/s), PPO iteration time split",
    "sync": "learner -> rollout weight sync vs a plain memcpy of the same bytes",
    "rl": "train-ppo (GRPO, toy task) with synchronous vs one-step-off asynchronous rollouts (iteration s)",
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, help_text in BENCHES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", dest="json_path", metavar="PATH", help="write the results as JSON here")
        p.add_argument("--quick", action="store_true", help="a small run (about a minute)")
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
        except ModuleNotFoundError as e:
            if e.name != f"benchmarks.bench_{name}":
                raise
            p.set_defaults(_bench_missing=True)
            continue
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
        p.set_defaults(_bench_module=module)


def run(cfg, args) -> int:
    if getattr(args, "_bench_missing", False):
        print(f"rlaif-ray bench {args.bench}: not built yet in this version")
        return 2
    return int(args._bench_module.run(args) or 0)
