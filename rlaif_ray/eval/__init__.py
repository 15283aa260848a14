"""Evaluation: statistics of pairwise judgements, similarity to references, plots and the report."""

from ..assets import DEMO_PROMPTS
from .report import format_examples, format_report, model_pairs, select_examples, summarise
from .stats import (
                    Comparison,
                    PositionBias,
                    WinRate,
                    bootstrap_ci,
                    normalised_scores,
                    paired_bootstrap_pvalue,
                    position_bias,
                    sign_test,
                    win_rate,
                    win_rate_matrix,
)

__all__ = ["DEMO_PROMPTS", "Comparison", "PositionBias", "WinRate", "bootstrap_ci", "format_examples", "format_report",
           "model_pairs", "normalised_scores", "paired_bootstrap_pvalue", "position_bias", "select_examples",
           "sign_test", "summarise", "win_rate", "win_rate_matrix"]
