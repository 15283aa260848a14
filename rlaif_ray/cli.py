"""`rlaif-ray <job> [--config FILE] [key.sub=value ...]`: argument parsing and dispatch only; the jobs
are listed in `rlaif_ray.jobs.JOBS`."""

from __future__ import annotations

import argparse
import logging
import sys

from .cluster import SharedPathError
from .config import ConfigError, describe, load, save
from .jobs import JOBS
from .stopping import StopSignal


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlaif-ray", description="RLAIF on Ray: AI feedback -> reward "
                                     "model -> PPO/DPO, with vLLM rollouts and DeepSpeed learners.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="job", metavar="JOB")
    for name, job in JOBS.items():
        p = sub.add_parser(name, help=job.help, description=job.help)
        module = job.add_arguments(p)
        if job.config is not None:
            p.add_argument("--config", help="YAML config file (see configs/)")
            p.add_argument("--show-config", action="store_true", help="print every key with its doc and exit")
            p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
        p.set_defaults(_module=module, _config=job.config, _resumable=job.resumable)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.job:
        parser.print_help()
        return 2
    module, config_cls = args._module, args._config
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
        if not args._resumable:
            return int(module.run(cfg, args) or 0)
        with StopSignal():  # a stop asked for while the job starts is kept for its loop
            return int(module.run(cfg, args) or 0)
    except SharedPathError as e:
        print(f"rlaif-ray {args.job}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
