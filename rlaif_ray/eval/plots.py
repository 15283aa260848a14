"""PNG plots of an eval run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_win_rates(rows: list[dict], path: str | Path) -> Path:
    """Horizontal bars of win rates (`label`, `win_rate`, `ci` per row) with 95% CI whiskers and 0.5."""
    plt = _pyplot()
    labels = [r["label"] for r in rows]
    rates = np.array([r["win_rate"] for r in rows], dtype=float)
    ci = np.array([r["ci"] for r in rows], dtype=float).reshape(-1, 2)
    err = np.vstack([rates - ci[:, 0], ci[:, 1] - rates]).clip(min=0)
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.barh(y, rates, xerr=err, color="#4C72B0", capsize=4)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate (ties count half), 95% bootstrap CI")
    ax.invert_yaxis()
    return _save(fig, plt, path)


def plot_heatmap(matrix: np.ndarray, models: list[str], path: str | Path) -> Path:
    """Win-rate matrix: cell (i, j) = win rate of row model against column model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(models) + 2.5, 1.0 * len(models) + 2))
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu", vmin=0, vmax=1)
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    for i in range(len(models)):
        for j in range(len(models)):
            if not np.isnan(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=9)
    ax.set_xlabel("opponent")
    ax.set_ylabel("model")
    fig.colorbar(im, ax=ax, label="win rate")
    return _save(fig, plt, path)


def plot_similarity(sims: dict[str, np.ndarray], path: str | Path) -> Path:
    """Distributions (box + points) of each model's similarity to the reference answers."""
    plt = _pyplot()
    names = list(sims)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 3, 4))
    ax.boxplot([np.asarray(sims[n]) for n in names], showmeans=True)
    rng = np.random.default_rng(0)  # horizontal jitter only, for readability
    for k, n in enumerate(names, start=1):
        v = np.asarray(sims[n])
        ax.scatter(k + rng.uniform(-0.12, 0.12, len(v)), v, s=8, alpha=0.4, color="#DD8452")
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right")
    ax.set_ylabel("cosine similarity to reference")
    return _save(fig, plt, path)


def plot_gold_vs_kl(gold: dict[str, dict], kl: dict[str, dict], path: str | Path) -> Path:
    """Each policy's mean gold score (95% CI) against its mean KL to the reference: the over-optimisation
    curve of Gao et al. 2022 (the gold rises, then falls, as the policy moves away from the start)."""
    plt = _pyplot()
    names = sorted((n for n in gold if n in kl), key=lambda n: kl[n]["mean"])
    x = np.array([kl[n]["mean"] for n in names], dtype=float)
    y = np.array([gold[n]["mean"] for n in names], dtype=float)
    ci = np.array([gold[n]["ci"] for n in names], dtype=float).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(x, y, yerr=np.vstack([y - ci[:, 0], ci[:, 1] - y]).clip(min=0), marker="o", capsize=4,
                color="#4C72B0")
    for xi, yi, n in zip(x, y, names, strict=True):
        ax.annotate(n, (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xlabel("KL to the reference (mean sequence log-ratio, nats)")
    ax.set_ylabel("gold score (mean, 95% CI)")
    return _save(fig, plt, path)


def _save(fig, plt, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
