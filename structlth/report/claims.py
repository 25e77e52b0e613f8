"""What the report claims from the gathered tables: winning tickets, the headline per method,
the extreme sparsity, and the speed measurements against their floors."""

from __future__ import annotations

import pandas as pd

from structlth.evidence import bracket
from structlth.speedup.measure import aa_readings, timing_noise


def winners(table: pd.DataFrame, column: str = "wins") -> pd.DataFrame:
    """Rows that win by `column`: wins (non-inferior to dense, structlth.evidence) or wins_paper."""
    return table[table[column].astype(bool)]


def inside_noise(saving: float, noise: float, ci: float) -> bool:
    """Whether a time saving is no result: within the run's noise or its own 95% half-width (NaN: none)."""
    return abs(saving) <= max(noise, 0.0 if pd.isna(ci) else ci)


def headline(table: pd.DataFrame, noise: float = 0.0) -> dict[str, str]:
    """Per method: its sparsest winning ticket that was timed, as 'X% time saving at Y% sparsity
    (...)'; a saving inside the run's timing noise or its own interval shows as ~0."""
    out = {}
    for method, rows in winners(table).dropna(subset=["time_saving"]).groupby("method", sort=False):
        r = rows.loc[rows["sparsity"].idxmax()]
        v = r["time_saving"]
        saving = f"~0 ({v:.2%}, inside the noise)" if inside_noise(v, noise, r.get("time_ci95")) else f"{v:.2%}"
        out[method] = (
            f"{saving} time saving at {r['sparsity']:.2%} sparsity ({r['flops_saving']:.1%} FLOP saving), {r['round']}:"
            f" test acc {r['acc_mean']:.4f}, {r['diff_vs_dense']:+.2%} vs dense [{r['diff_low']:+.2%}, {r['diff_high']:+.2%}]"
        )
    return out


def extreme_sparsity(table: pd.DataFrame, column: str = "wins") -> dict[str, float | None]:
    """Per method, the paper's "extreme sparsity": the highest sparsity among its winning
    rounds by `column` (None where no round wins)."""
    win = winners(table, column)
    return {
        m: (float(win.loc[win["method"] == m, "sparsity"].max()) if (win["method"] == m).any() else None) for m in table["method"].unique()
    }


def suspect_rows(bench: pd.DataFrame, noise: float) -> pd.DataFrame:
    """Rows whose time saving beats their FLOP saving (the physical limit) by more than the noise."""
    return bench[bench["time_saving"] > bench["flops_saving"] + noise]


def _efficiencies(b: pd.DataFrame) -> dict[str, float | None]:
    """The speed figures of one runtime's rows at one batch size (see `targets`), from the rows given."""
    big = b[(b["engine"] == "slim") & (b["flops_saving"] >= 0.4)]
    group = b[b["engine"] == "slim+blocks"]
    return {
        "channel_time_per_flop_saving": float((big["time_saving"] / big["flops_saving"]).median()) if len(big) else None,
        "best_group_time_saving": float(group["time_saving"].max()) if len(group) else None,
        "group_time_per_flop_saving": float((group["time_saving"] / group["flops_saving"]).median()) if len(group) else None,
    }


def targets(bench: pd.DataFrame, batch: int, winning: set[tuple[str, str]] | None = None) -> dict[str, float | str | None]:
    """The speedup measurements at `batch` (None where no ticket qualifies), in PyTorch and,
    prefixed `ort_`, in ONNX Runtime; the ticket figures count only the (method, round) pairs in
    `winning` (tickets that keep accuracy) when given, the noise every stage:

    - timing_noise: see `timing_noise`;
    - aa_stages, aa_median, aa_largest, aa_largest_stage: how many bench stages read A/A
      (`aa_readings`), the median and largest reading, and the stage of the largest;
    - channel_time_per_flop_saving: median of time_saving / flops_saving over slim tickets with
      at least 40% FLOP saving;
    - best_group_time_saving: the best regroup (slim+blocks) time saving;
    - group_time_per_flop_saving: median of time_saving / flops_saving over regroup tickets.
    """
    out: dict[str, float | str | None] = {}
    for runtime, prefix in (("torch", ""), ("onnxruntime", "ort_")):
        b = bench[(bench["batch"] == batch) & (bench["runtime"] == runtime)]
        if winning is not None:
            b = b[pd.Series([(m, r) in winning for m, r in zip(b["method"], b["round"])], index=b.index, dtype=bool)]
        out[f"{prefix}timing_noise"] = timing_noise(bench, batch, runtime)
        aa = aa_readings(bench, batch, runtime)
        out[f"{prefix}aa_stages"] = len(aa)
        out[f"{prefix}aa_median"] = float(aa.median()) if len(aa) else None
        out[f"{prefix}aa_largest"] = float(aa.max()) if len(aa) else None
        out[f"{prefix}aa_largest_stage"] = str(aa.idxmax()) if len(aa) else None
        out |= {f"{prefix}{k}": v for k, v in _efficiencies(b).items()}
    return out


def kernel_channels_per_channel(bench: pd.DataFrame, layers: pd.DataFrame, batch: int) -> float | None:
    """Output channels PyTorch's oneDNN convs computed per output channel the channel-wise
    tickets' slim convs carry, at `batch`: kernel_channels over channels, each summed over those
    tickets' layers (bench_layers.csv); None where no layer has kernel_channels (e.g. on a GPU)."""
    if "kernel_channels" not in layers or not len(layers):
        return None
    slim = bench[(bench["runtime"] == "torch") & (bench["batch"] == batch) & (bench["engine"] == "slim")]  # as `_efficiencies`
    rows = layers[(layers["runtime"] == "torch") & (layers["batch"] == batch)].dropna(subset=["kernel_channels", "channels"])
    rows = rows.merge(slim[["method", "round"]].drop_duplicates(), on=["method", "round"])
    return float(rows["kernel_channels"].sum() / rows["channels"].sum()) if len(rows) else None


CHANNEL_FLOOR, GROUP_FLOOR = 0.6, 0.15

TARGET_ROWS = (  # key, description, goal, test (value, that runtime's noise), format
    (
        "channel_time_per_flop_saving",
        "channel-wise: time saving / FLOP saving (median, winning tickets with ≥ 40% FLOP saving)",
        f"≥ {CHANNEL_FLOOR}",
        lambda v, n: v >= CHANNEL_FLOOR,
        "{:.2f}",
    ),
    (
        "best_group_time_saving",
        "group-wise: best winning regroup time saving",
        f"≥ {GROUP_FLOOR:.0%} and > 3× noise",
        lambda v, n: v >= GROUP_FLOOR and v > 3 * n,
        "{:.1%}",
    ),
    (
        "group_time_per_flop_saving",
        "group-wise: time saving / FLOP saving (median over winning regroup tickets)",
        "reported",
        lambda v, n: True,
        "{:.2f}",
    ),
)

MATCH_WITHIN = 0.03  # two rounds are "matched" when their sparsity (or FLOP saving) differs by at most this


def _pair_counts(pairs: pd.DataFrame, first: str, second: str) -> tuple[int, int, int]:
    """(ahead, behind, tied): `first`'s rounds against `second`'s in a matched table, a side
    counted only where its Holm-adjusted p < 0.05."""
    rows = pairs[((pairs["a"] == first) & (pairs["b"] == second)) | ((pairs["a"] == second) & (pairs["b"] == first))]
    sign = rows["diff"].where(rows["a"] == first, -rows["diff"])
    sig = rows["p_holm"] < 0.05
    ahead, behind = int(((sign > 0) & sig).sum()), int(((sign < 0) & sig).sum())
    return ahead, behind, len(rows) - ahead - behind


def _against(pairs: pd.DataFrame, methods: list[str], other: str) -> str:
    parts = []
    for m in methods:
        ahead, behind, tied = _pair_counts(pairs, m, other)
        if ahead + behind + tied:
            said = [f"ahead in {ahead}" if ahead else "", f"behind in {behind}" if behind else "", f"tied in {tied}" if tied else ""]
            parts.append(f"{m} {', '.join(s for s in said if s)} of {ahead + behind + tied} pairs")
    return "; ".join(parts)


def verdict(
    table: pd.DataFrame,
    pairs: dict[str, pd.DataFrame],
    structured: list[str],
    baselines: list[str],
    margin: float,
    noise: float,
    where: str,
) -> list[str]:
    """The report's opening, from this run's own tests: which methods kept dense accuracy (at
    `margin`) and to what sparsity, which lost it, how the structured tickets compare with naive channel pruning
    at matched sparsity and with the Torch-Pruning baselines at matched FLOPs (counted by
    Holm-adjusted p < 0.05), and what the sparsest winning ticket of each saves in time (`where`:
    the machine and batch). structured: the ticket methods; pairs: `evidence.matched` by
    "sparsity" and "flops_saving"."""
    br = bracket(table)
    held = [f"{m} to {w:.1%} sparsity" for m, (w, _) in br.items() if w is not None]
    lost = [
        f"{m} at every round" if w is None else f"{m} from {loss:.1%}" + (f" (yet wins again at {w:.1%})" if w > loss else "")
        for m, (w, loss) in br.items()
        if loss is not None
    ]
    out = [f"- Kept dense accuracy (non-inferior within {margin * 100:g} point): {', '.join(held) if held else 'no method'}."]
    if lost:
        out.append(f"- Lost it: {', '.join(lost)}.")
    naive = _against(pairs["sparsity"], structured, "imp_channel")
    if naive:
        out.append(f"- Against naive channel pruning (imp_channel) at matched sparsity, Holm p < 0.05: {naive}.")
    for b in baselines:
        field = _against(pairs["flops_saving"], structured, b)
        if field:
            out.append(f"- Against Torch-Pruning ({b}) at matched FLOPs, Holm p < 0.05: {field}.")
    speed = []
    for m, rows in winners(table).dropna(subset=["time_saving"]).groupby("method", sort=False):
        r = rows.loc[rows["sparsity"].idxmax()]
        v = r["time_saving"]
        shown = "~0" if inside_noise(v, noise, r.get("time_ci95")) else f"{v:.1%}"
        speed.append(f"{m} saves {shown} of the time ({r['flops_saving']:.1%} of the FLOPs) at {r['sparsity']:.1%} sparsity")
    out.append(
        f"- Speed ({where}; timing noise {noise:.1%}), the sparsest winning ticket of each method: {'; '.join(speed)}."
        if speed
        else f"- Speed on {where}: no winning ticket was timed."
    )
    return out
