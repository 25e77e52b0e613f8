"""The report's figures, drawn with matplotlib's object API (a Figure per plot, no pyplot and so
no global backend to set): accuracy and time saving against sparsity, the accuracy/time
trade-off, and one conv's masks with their blocks made contiguous."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure


def method_colors(methods: list[str]) -> dict[str, str]:
    """One colour per method, the same in every plot: matplotlib's cycle in params order."""
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def plot_accuracy(table: pd.DataFrame, dense: dict, colors: dict[str, str], path: Path) -> None:
    """Test accuracy against sparsity per method, with 95% interval bars; dense's interval is
    the grey band."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for method, rows in table.groupby("method", sort=False):
        err = [(rows["acc_mean"] - rows["acc_low"]) * 100, (rows["acc_high"] - rows["acc_mean"]) * 100]
        ax.errorbar(
            rows["sparsity"] * 100, rows["acc_mean"] * 100, yerr=err, marker="o", ms=4, capsize=2, color=colors[method], label=method
        )
    ax.axhline(dense["acc"] * 100, color="k", ls="--", lw=1, label="dense")
    ax.axhspan(dense["low"] * 100, dense["high"] * 100, color="0.88", zorder=0, label="dense 95% interval")
    ax.set(
        xlabel="sparsity of prunable weights (%)",
        ylabel="test accuracy (%)",
        title=f"Accuracy vs sparsity ({dense['n']} test images, 95% intervals)",
    )
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_tradeoff(table: pd.DataFrame, dense: dict, colors: dict[str, str], path: Path, noise: float = 0.0) -> None:
    """Test accuracy against measured time saving (PyTorch), with 95% interval bars: the trade-off
    the paper argues. Dense is the point at zero saving; the band is the timing noise."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for method, rows in table.dropna(subset=["time_saving"]).groupby("method", sort=False):
        err = [(rows["acc_mean"] - rows["acc_low"]) * 100, (rows["acc_high"] - rows["acc_mean"]) * 100]
        ax.errorbar(
            rows["time_saving"] * 100,
            rows["acc_mean"] * 100,
            yerr=err,
            marker="o",
            ms=4,
            capsize=2,
            ls="",
            color=colors[method],
            label=method,
        )
    ax.errorbar(
        [0],
        [dense["acc"] * 100],
        yerr=[[(dense["acc"] - dense["low"]) * 100], [(dense["high"] - dense["acc"]) * 100]],
        marker="*",
        ms=10,
        color="k",
        capsize=2,
        ls="",
        label="dense",
    )
    if noise:
        ax.axvspan(-noise * 100, noise * 100, color="0.88", zorder=0, label=f"timing noise ±{noise:.1%}")
    ax.set(xlabel="measured inference time saving (%)", ylabel="test accuracy (%)", title="Accuracy vs time saving")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_savings(table: pd.DataFrame, colors: dict[str, str], path: Path, noise: float = 0.0) -> None:
    """Measured time saving (PyTorch; ONNX Runtime dashed, where timed) and the FLOP limit per
    method against sparsity; the grey band is the run's PyTorch timing noise (savings inside it
    are not results)."""
    fig = Figure(figsize=(7.5, 4))
    ax = fig.subplots()
    for method, rows in table.dropna(subset=["time_saving"]).groupby("method", sort=False):
        color = colors[method]
        ax.plot(rows["sparsity"] * 100, rows["time_saving"] * 100, marker="o", color=color, label=f"{method} (measured)")
        ax.plot(rows["sparsity"] * 100, rows["flops_saving"] * 100, ls=":", color=color, label=f"{method} (FLOP limit)")
        if rows["ort_time_saving"].notna().any():
            ax.plot(
                rows["sparsity"] * 100, rows["ort_time_saving"] * 100, marker="x", ls="--", color=color, label=f"{method} (ONNX Runtime)"
            )
    if noise:
        ax.axhspan(-noise * 100, noise * 100, color="0.85", zorder=0, label=f"timing noise ±{noise:.1%}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="sparsity of prunable weights (%)", ylabel="saving (%)", title="Inference time saving vs sparsity")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def block_order(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column permutations of a 2-D mask [R, K] that make its blocks contiguous: rows
    grouped by identical pattern (larger groups first, dead rows last), columns by the first
    row group that uses them (unused columns last)."""
    flat = mask.bool()
    patterns, inverse, counts = torch.unique(flat, dim=0, return_inverse=True, return_counts=True)
    rank = sorted(range(len(patterns)), key=lambda g: (not bool(patterns[g].any()), -int(counts[g]), g))
    position = torch.empty(len(patterns), dtype=torch.long)
    position[torch.tensor(rank)] = torch.arange(len(patterns))
    rows = torch.sort(position[inverse], stable=True).indices
    ordered = flat[rows]
    first = torch.where(ordered.any(0), ordered.float().argmax(0), torch.tensor(len(rows)))
    return rows, torch.sort(first, stable=True).indices


def plot_masks(masks: dict[str, torch.Tensor], layer: str, round_id: str, path: Path) -> None:
    """One conv's mask per method ([C_out] rows x [C_in*kh*kw] columns), rows and columns
    permuted by `block_order` so a ticket's blocks show as the paper draws them."""
    fig = Figure(figsize=(3.2 * len(masks), 3.6))
    axes = fig.subplots(1, len(masks))
    for ax, (method, m) in zip(axes if len(masks) > 1 else [axes], masks.items()):
        flat = m.flatten(1)
        rows, cols = block_order(flat)
        ax.imshow(flat[rows][:, cols].float().numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
        ax.set(title=f"{method}, {round_id}\n{layer}", xlabel="columns (C_in·kh·kw), permuted", ylabel="output channels, permuted")
    fig.suptitle("black: a kept weight; rows and columns permuted so blocks are contiguous", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
