"""Eval plots are written as decodable, non-empty PNGs; embedding similarity behaves."""

import numpy as np
import pytest

from rlaif_ray.eval.plots import plot_heatmap, plot_similarity, plot_win_rates


def _check_png(path):
    from PIL import Image

    assert path.exists() and path.stat().st_size > 2000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.load()
        w, h = im.size
        assert w > 200 and h > 100
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # something was drawn, not a blank canvas


def test_plots_written(tmp_path):
    rows = [{"label": "dpo vs base", "win_rate": 0.62, "ci": [0.55, 0.69]},
            {"label": "ppo vs base", "win_rate": 0.48, "ci": [0.40, 0.56]}]
    m = np.array([[0.5, 0.38, np.nan], [0.62, 0.5, 0.7], [np.nan, 0.3, 0.5]])
    sims = {"base": np.linspace(0.2, 0.6, 40), "dpo": np.linspace(0.3, 0.8, 40)}
    for p in (plot_win_rates(rows, tmp_path / "win_rates.png"),
              plot_heatmap(m, ["base", "dpo", "ppo"], tmp_path / "plots" / "heatmap.png"),
              plot_similarity(sims, tmp_path / "similarity.png")):
        _check_png(p)


def test_embedding_similarity_offline():
    from rlaif_ray.eval.similarity import load_embedder, similarity

    emb = load_embedder()
    ref = ["Drink water and rest; most colds pass within a week.",
           "Preheat the oven to 180 C and bake the cake for 35 minutes."]
    same = similarity(emb, ref, ref)
    assert np.allclose(same, 1.0, atol=1e-4)
    close = similarity(emb, ["Rest and drink plenty of fluids, a cold usually goes away in about a week."], ref[:1])
    unrelated = similarity(emb, ["The stock market closed higher on Tuesday."], ref[:1])
    assert unrelated[0] < close[0] < 1.0 and unrelated[0] < 0.3
    with pytest.raises(ValueError, match="2 references"):
        similarity(emb, ["a"], ref)
