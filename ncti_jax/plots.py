"""Plots of a ranking (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'ncti-jax[plot]'") from None
    return plt


def plot_ranking(
    records: list[dict[str, Any]], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """Bar chart of NCTI per model, best first, with its normalised components stacked.

    ``etf_norm`` and ``ncc_norm`` stack upwards, ``-vc_norm`` downwards; a black
    marker shows the NCTI score (their sum). Unranked models (no score) are left out.
    """
    records = [r for r in records if r.get("ncti") is not None]
    plt = _pyplot()
    names = [r["model"] for r in records]
    pos = np.arange(len(records))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(records) + 2), 4.5))
    if all("etf_norm" in r for r in records):
        etf = np.array([r["etf_norm"] for r in records])
        ncc = np.array([r["ncc_norm"] for r in records])
        vc = np.array([r["vc_norm"] for r in records])
        ax.bar(pos, etf, color="#4c72b0", label="etf (normalised)")
        ax.bar(pos, ncc, bottom=etf, color="#55a868", label="ncc (normalised)")
        ax.bar(pos, -vc, color="#c44e52", label="-vc (normalised)")
        ax.scatter(pos, [r["ncti"] for r in records], color="black", zorder=3, label="NCTI")
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.bar(pos, [r["ncti"] for r in records], color="#4c72b0")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(pos, names, rotation=40, ha="right")
    ax.set_ylabel("NCTI")
    ax.set_title(title or "NCTI ranking (best first)")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_vs_truth(
    names: list[str],
    scores: np.ndarray,
    truth: np.ndarray,
    wtau: float,
    path: str | os.PathLike,
    *,
    title: str = "",
) -> Path:
    """NCTI against fine-tune accuracy, one labelled point per model, wtau in the title."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.scatter(scores, truth, color="#4c72b0")
    for name, s, t in zip(names, scores, truth, strict=True):
        ax.annotate(name, (s, t), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xlabel("NCTI")
    ax.set_ylabel("fine-tune accuracy")
    ax.set_title(f"{title + ': ' if title else ''}weighted Kendall tau = {wtau:.3f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_metric_rankings(
    blocks: dict[str, list[dict[str, Any]]], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """One bar chart per metric, side by side: each metric's values, best first
    (``blocks``: ``{metric: records}``; unranked models left out)."""
    plt = _pyplot()
    n = len(blocks)
    widest = max(len(r) for r in blocks.values())
    fig, axes = plt.subplots(1, n, figsize=(n * max(3.0, 0.35 * widest + 1.5), 4.5), squeeze=False)
    for ax, (metric, records) in zip(axes[0], blocks.items(), strict=True):
        records = [r for r in records if r.get(metric) is not None]
        pos = np.arange(len(records))
        ax.bar(pos, [r[metric] for r in records], color="#4c72b0")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(pos, [r["model"] for r in records], rotation=60, ha="right", fontsize=7)
        ax.set_title(metric)
    fig.suptitle(title or "rankings by metric (best first)")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_metrics_vs_truth(
    panels: dict[str, tuple[list[str], np.ndarray, np.ndarray, float]],
    path: str | os.PathLike,
    *,
    title: str = "",
) -> Path:
    """Each metric against fine-tune accuracy, one panel per metric, side by side:
    ``panels`` is ``{metric: (names, values, accuracies, weighted tau)}``."""
    plt = _pyplot()
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), squeeze=False, sharey=True)
    for ax, (metric, (names, x, y, wtau)) in zip(axes[0], panels.items(), strict=True):
        ax.scatter(x, y, color="#4c72b0")
        for name, s, t in zip(names, x, y, strict=True):
            ax.annotate(name, (s, t), textcoords="offset points", xytext=(3, 2), fontsize=6)
        ax.set_xlabel(metric)
        ax.set_title(f"wtau = {wtau:.3f}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fine-tune accuracy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
