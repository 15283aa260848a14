"""Schemas, streaming IO, validation and splits for prompts, pairs and preferences. Never calls models."""

from .io import (
    RowWriter,
    iter_chunks,
    iter_rows,
    no_cyclic_gc,
    read_pairs,
    read_preferences,
    read_prompts,
    read_records,
    read_sft,
    split_by_id,
    split_side,
    to_hf_dataset,
    to_trl_rows,
    write_rows,
)
from .schemas import (
    DataError,
    PairRecord,
    PreferenceRecord,
    PromptRecord,
    SFTRecord,
    Text,
    check_row,
    content_id,
    detect_kind,
    text_of,
)

__all__ = ["DataError", "PairRecord", "PreferenceRecord", "PromptRecord", "RowWriter", "SFTRecord", "Text", "check_row",
           "content_id", "detect_kind", "iter_chunks", "iter_rows", "no_cyclic_gc", "read_pairs", "read_preferences", "read_prompts", "read_records", "read_sft",
           "split_by_id", "split_side", "text_of", "to_hf_dataset", "to_trl_rows", "write_rows"]
