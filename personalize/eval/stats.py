"""Paired effect statistics over seeds: the numbers every toy-world effect is reported with.

An effect compares a treated arm (a method, a regularizer, an edit) with a reference arm (the same thing without
it) on the same seeds: one paired difference per seed (a training seed, or a set of sampling seeds), then the mean,
its standard error and a 95 % interval, both Student's t (the main one) and a percentile bootstrap over seeds
(a check that does not assume normal differences). An effect is *detected* when the whole t interval lies above
zero (below zero: the treatment hurts); with 3-5 seeds only a large, steady effect is.

    eff = paired_effect(base=[0.30, 0.41, 0.35], treated=[0.52, 0.60, 0.49])
    eff.mean, eff.lo, eff.hi, eff.detected
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# Two-sided 95 % quantiles of Student's t, t_{0.975, df} (df = n - 1); beyond 30 the normal 1.96 is within 2 %.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042}


def t975(df: int) -> float:
    """t_{0.975, df}: exact from the table for df <= 20, the next tabulated df above (conservative) for more."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 seeds (df >= 1), got df={df}")
    return next((T975[k] for k in sorted(T975) if k >= df), 1.96)


@dataclass(frozen=True)
class Effect:
    """Mean paired difference (treated - reference) over n seeds, with its standard error and 95 % intervals."""

    n: int
    mean: float
    se: float
    lo: float  # t interval
    hi: float
    boot_lo: float  # percentile bootstrap over seeds
    boot_hi: float
    deltas: tuple[float, ...] = field(default=())

    @property
    def detected(self) -> bool:
        """The whole 95 % t interval is above zero."""
        return self.lo > 0

    @property
    def harmful(self) -> bool:
        """The whole 95 % t interval is below zero."""
        return self.hi < 0

    def verdict(self) -> str:
        """Direction only: whether higher is better depends on the metric (composition yes, drift no)."""
        return "higher" if self.detected else "lower" if self.harmful else "no difference shown"

    def __str__(self) -> str:
        return f"{num(self.mean, True)} (95 % CI {num(self.lo, True)} to {num(self.hi, True)}, n={self.n})"


def num(x: float, sign: bool = False) -> str:
    """3 decimals, or 3 significant digits below 0.01 (mechanism metrics are small)."""
    spec = ("+" if sign else "") + (".3f" if x == 0 or abs(x) >= 0.01 else ".2e")
    return format(x, spec)


def bootstrap_interval(deltas: list[float], draws: int = 4000, seed: int = 0) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of the mean of `deltas` resampled with replacement (a fixed seed: reproducible)."""
    rng, n = random.Random(seed), len(deltas)
    means = sorted(sum(rng.choices(deltas, k=n)) / n for _ in range(draws))
    return means[int(0.025 * (draws - 1))], means[int(0.975 * (draws - 1))]


def paired_effect(base: list[float], treated: list[float], bootstrap: bool = True) -> Effect:
    """The effect of `treated` over `base`, paired by position (the same seed in both lists); `bootstrap=False`
    leaves the bootstrap interval as nan (it is the slow part)."""
    if len(base) != len(treated):
        raise ValueError(f"paired arms need one value per seed in both, got {len(base)} and {len(treated)}")
    deltas = [float(t) - float(b) for b, t in zip(base, treated)]
    n = len(deltas)
    if n < 2:
        raise ValueError(f"an interval needs at least 2 seeds, got {n}")
    mean = sum(deltas) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n - 1))
    se = sd / math.sqrt(n)
    half = t975(n - 1) * se
    boot_lo, boot_hi = bootstrap_interval(deltas) if bootstrap else (math.nan, math.nan)
    return Effect(n, mean, se, mean - half, mean + half, boot_lo, boot_hi, tuple(deltas))


def effects(rows: list[dict], reference: str, key: str = "seed") -> dict[str, dict[str, Effect]]:
    """rows ({"arm": .., key: .., metric: value, ...}) -> {treated arm: {metric: Effect vs `reference`}}, paired
    by `key`; every numeric metric the reference has is compared, over the seeds both arms have."""
    by_arm: dict[str, dict] = {}
    for row in rows:
        by_arm.setdefault(row["arm"], {})[row[key]] = row
    if reference not in by_arm:
        raise ValueError(f"no rows for the reference arm {reference!r}; arms: {sorted(by_arm)}")
    ref = by_arm[reference]
    out = {}
    for arm, got in by_arm.items():
        if arm == reference:
            continue
        seeds = [s for s in ref if s in got]
        metrics = [m for m, v in ref[seeds[0]].items() if m not in ("arm", key) and isinstance(v, (int, float))]
        out[arm] = {m: paired_effect([ref[s][m] for s in seeds], [got[s][m] for s in seeds]) for m in metrics}
    return out


def means(rows: list[dict], key: str = "seed") -> dict[str, dict[str, float]]:
    """arm -> metric -> mean over its rows."""
    acc: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        for m, v in row.items():
            if m not in ("arm", key) and isinstance(v, (int, float)):
                acc.setdefault(row["arm"], {}).setdefault(m, []).append(float(v))
    return {arm: {m: sum(v) / len(v) for m, v in ms.items()} for arm, ms in acc.items()}


def markdown(rows: list[dict], reference: str, key: str = "seed") -> str:
    """A table per treated arm: metric | reference mean | treated mean | delta | 95 % CI (t) | bootstrap | verdict."""
    avg, lines = means(rows, key), []
    for arm, per_metric in effects(rows, reference, key).items():
        n = next(iter(per_metric.values())).n
        lines += [f"### {arm} vs {reference} ({n} seeds)", "",
                  f"| metric | {reference} | {arm} | delta | 95 % CI (t) | 95 % CI (bootstrap) | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for m, e in per_metric.items():
            lines.append(f"| {m} | {num(avg[reference][m])} | {num(avg[arm][m])} | {num(e.mean, True)} | "
                         f"{num(e.lo, True)} to {num(e.hi, True)} | {num(e.boot_lo, True)} to "
                         f"{num(e.boot_hi, True)} | {e.verdict()} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], reference: str, path, key: str = "seed", metrics: list[str] | None = None) -> None:
    """Per-seed deltas (dots) with the mean and its 95 % t interval (bar), one panel per treated arm.
    Needs matplotlib: pip install 'personalize[eval]'."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("the effect plot needs matplotlib: pip install 'personalize[eval]'") from err
    from personalize.atomic import atomic_path

    found = effects(rows, reference, key)
    fig, axes = plt.subplots(1, len(found), figsize=(6 * len(found), 3.5), squeeze=False)
    for ax, (arm, per_metric) in zip(axes[0], found.items()):
        names = [m for m in per_metric if metrics is None or m in metrics]
        for i, m in enumerate(names):
            e = per_metric[m]
            ax.scatter([i + 0.15] * e.n, e.deltas, s=12, color="gray", zorder=2)
            ax.errorbar(i, e.mean, yerr=[[e.mean - e.lo], [e.hi - e.mean]], fmt="o", capsize=4,
                        color="tab:green" if e.detected else "tab:red" if e.harmful else "tab:blue", zorder=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{arm} - {reference} per seed, mean and 95 % CI", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
