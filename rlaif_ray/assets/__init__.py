"""Data files shipped with the package."""

from pathlib import Path

# The demo's prompt set: train.jsonl (prompts) and heldout.jsonl (prompts + reference answers).
DEMO_PROMPTS = Path(__file__).resolve().parent / "prompts"
