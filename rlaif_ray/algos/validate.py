"""`rlaif-ray validate FILE...`: check prompts / pairs / preference files, print a report per file.

Exit 1 when any file has an error (each printed as `file:row:field: problem`), else 0. Configured by
flags only: there is nothing to run distributed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="JSONL or Parquet files")
    p.add_argument("--kind", choices=["prompts", "pairs", "preferences"],
                   help="force the schema (default: detected per file from its first row)")
    p.add_argument("--tokenizer", metavar="PATH", help="tokenizer dir or id for token lengths")
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="flag prompt + response longer than N tokens (needs --tokenizer)")
    p.add_argument("--human", metavar="FILE", help="human-labeled preferences: report agreement "
                   "(accuracy, Cohen's kappa) of each preference FILE with it on shared ids")
    p.add_argument("--val-fraction", type=float, default=0.1, help="report the train/val split sizes")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--json", metavar="PATH", help="also write the full report as JSON")


def run(cfg, args: argparse.Namespace) -> int:
    from ..data import read_preferences
    from ..data.validate import format_report, token_counter, validate_file

    if args.max_tokens is not None and not args.tokenizer:
        print("rlaif-ray validate: --max-tokens needs --tokenizer", file=sys.stderr)
        return 2
    count = None
    if args.tokenizer:
        from ..models import load_tokenizer

        count = token_counter(load_tokenizer(args.tokenizer))
    missing = [f for f in [*args.files, args.human] if f and not Path(f).exists()]
    if missing:
        print(f"rlaif-ray validate: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    reports = []
    human = None
    if args.human:
        rep = validate_file(args.human, "preferences", count, args.max_tokens,
                            val_fraction=args.val_fraction, seed=args.seed)
        reports.append(rep)
        if not rep.error_count:
            human = {r.id: r for r in read_preferences(args.human)}
    for path in args.files:
        reports.append(validate_file(path, args.kind, count, args.max_tokens, human=human,
                                     human_file=args.human or "", val_fraction=args.val_fraction,
                                     seed=args.seed))
    for rep in reports:
        print(format_report(rep))
    errors = sum(r.error_count for r in reports)
    print(f"{len(reports)} file(s), {sum(r.rows for r in reports)} rows, {errors} error(s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"files": [r.to_dict() for r in reports], "errors": errors},
                                              indent=1))
    return 1 if errors else 0
