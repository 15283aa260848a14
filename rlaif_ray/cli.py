"""`rlaif-ray <job> [--config FILE] [key.sub=value ...]`: argument parsing and dispatch only.

Every job lives in `rlaif_ray/algos/<job>.py` (or `benchmarks/` for `bench`) and exposes:
  CONFIG              the job's config dataclass (omit for jobs configured by flags only)
  add_arguments(p)    optional extra flags
  run(cfg, args)      the job; returns the process exit code
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .cluster import SharedPathError
from .config import ConfigError, describe, load, save

# job name -> (module, one-line help, issue that builds it)
JOBS: dict[str, tuple[str, str]] = {
    "validate": ("rlaif_ray.algos.validate", "check prompts / pairs / preference files; report stats and errors"),
    "label": ("rlaif_ray.algos.label", "label pairs with the AI-feedback pool (Claude, OpenAI-compatible, local)"),
    "label-human": ("rlaif_ray.algos.label_human", "label pairs by hand at the terminal"),
    "generate-pairs": ("rlaif_ray.algos.generate_pairs", "sample >= 2 responses per prompt into unlabeled pairs"),
    "train-rm": ("rlaif_ray.algos.train_rm", "train a Bradley-Terry reward model on preferences"),
    "train-dpo": ("rlaif_ray.algos.train_dpo", "DPO / IPO / conservative DPO in chained stages"),
    "train-ppo": ("rlaif_ray.algos.train_ppo", "the RLAIF PPO loop: rollouts, rewards, updates, weight sync"),
    "eval": ("rlaif_ray.algos.eval", "pairwise win rates of checkpoints with CIs and plots"),
    "bench": ("benchmarks", "benchmarks: rollout, label, learner, sync"),
    "demo": ("rlaif_ray.algos.demo", "the offline quickstart: generate, label, train RM/PPO/DPO, eval"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlaif-ray", description="RLAIF on Ray: AI feedback -> reward "
                                     "model -> PPO/DPO, with vLLM rollouts and DeepSpeed learners.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="job", metavar="JOB")
    for name, (module_name, help_text) in JOBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = _import_job(module_name)
        if module is None:
            p.set_defaults(_missing=True)
            continue
        if getattr(module, "CONFIG", None) is not None:
            p.add_argument("--config", help="YAML config file (see configs/)")
            p.add_argument("--show-config", action="store_true", help="print every key with its doc and exit")
            p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _import_job(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:  # the job itself is not built yet; any other missing module is a bug
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.job:
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"rlaif-ray {args.job}: not built yet in this version", file=sys.stderr)
        return 2
    module = args._module
    config_cls = getattr(module, "CONFIG", None)
    if config_cls is None:
        return int(module.run(None, args) or 0)
    if args.show_config:
        for key, doc, default in describe(config_cls):
            print(f"{key} = {default!r}\n    {doc}")
        return 0
    try:
        cfg = load(config_cls, args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"rlaif-ray {args.job}: config error: {e}", file=sys.stderr)
        return 2
    run_dir = getattr(cfg, "run_dir", None)
    if run_dir:
        save(cfg, run_dir)
    try:
        return int(module.run(cfg, args) or 0)
    except SharedPathError as e:
        print(f"rlaif-ray {args.job}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
