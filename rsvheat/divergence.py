"""Layer-wise divergence between two checkpoints trained from the same initialisation (docs/noisy-pretraining.md).

Which layers did training on noisy labels (or fine-tuning, or another seed) move? For every compared tensor of two
state dicts A (reference) and B, with ``a = vec(W_A)``, ``b = vec(W_B)``:

- ``kl_gauss``: KL(N(mean_a, std_a^2) || N(mean_b, std_b^2)) with population std; NaN if either std is 0.
- ``kl_hist``: KL between histograms on shared edges over ``[min(a, b), max(a, b)]``, Freedman-Diaconis bins
  (``h = 2·IQR(a and b)·n^(-1/3)``, ``n`` the numel of one tensor, ``clamp(ceil(range / h), 5, 512)`` bins; ``ceil(√n)``
  when the IQR is 0), ``p = (counts + 1e-10) / Σ``.
- ``js``: Jensen-Shannon divergence of the same histograms (at most ln 2).
- ``rel_l2``: ``|a - b| / |a|`` (paired: needs the same initialisation). The primary metric.
- ``cos_dist``: ``1 - <a, b> / (|a| |b|)`` (paired).

The **noise floor** of a layer is ``mean + 2·std`` of the metric over every pair of seed runs (R ≥ 3 recommended;
with two runs, the single pair). A layer is *robust* when ``metric ≤ (1 + margin)·floor``; ``suggest_freeze`` is the
longest prefix of encoder stages whose layers are all robust. Histogram metrics of layers with fewer than 1000
values are marked ``reliable = False`` (most bins are empty there; rely on the paired metrics).

Command line (CPU only)::

    python -m rsvheat.divergence clean/model_full.pt noisy/model_full.pt \\
        --floor seed0/model_full.pt seed1/model_full.pt seed2/model_full.pt --out out/divergence
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_GROUPS",
    "DivergenceReport",
    "LayerDivergence",
    "analyze_layer_divergence",
    "gaussian_kl",
    "histogram_divergences",
    "load_state_dict",
    "main",
    "noise_floor",
    "suggest_freeze",
]

Metric = Literal["rel_l2", "cos_dist", "js", "kl_hist", "kl_gauss"]
METRICS: tuple[str, ...] = ("kl_gauss", "kl_hist", "js", "rel_l2", "cos_dist")
CSV_COLUMNS = ("layer", "group", "stage", "depth_idx", "n_params", "kl_gauss", "kl_hist", "n_bins", "js", "rel_l2",
               "cos_dist", "floor", "ratio", "verdict", "reliable")
# Group regexes, tried in order (the first match names the group); other keys are "other".
DEFAULT_GROUPS: dict[str, str] = {
    "decoder": r"^(head\.)?(decoders?|fuse_frequency)\.",
    "head": r"^(head|aux_head|proj|predictor)\.",
    "encoder": r"^(encoder\.)?(stems|stages|downsamples|outnorms|norm|patch_embed|layers|blocks)\b",
}
# The encoder stage of a key: stems are stage "stem"; stages.i, its output norm and the downsampling into it
# (downsamples.{i-1}) are stage i.
DEFAULT_STAGE = (r"^(?:encoder\.)?(?:stages\.(?P<stage>\d+)|outnorms\.(?P<out>\d+)|downsamples\.(?P<down>\d+)"
                 r"|(?P<stem>stems))\.")
HIST_EPS = 1e-10
MIN_RELIABLE = 1000
_SKIP_LEAVES = ("running_mean", "running_var", "num_batches_tracked", "k_exp")  # statistics and derived tensors
_OWN_ROWS = ("fve", "sce")  # the heat operator's frequency embeddings: rows of their own whatever their ndim


@dataclass
class LayerDivergence:
    """One CSV row (see :data:`CSV_COLUMNS`)."""

    layer: str
    group: str
    stage: str
    depth_idx: int
    n_params: int
    kl_gauss: float
    kl_hist: float
    n_bins: int
    js: float
    rel_l2: float
    cos_dist: float
    floor: float = math.nan
    ratio: float = math.nan
    verdict: str = ""
    reliable: bool = True


@dataclass
class DivergenceReport:
    """What :func:`analyze_layer_divergence` found: rows, per-group means, the freeze suggestion, what was skipped."""

    layers: list[LayerDivergence]
    metric: str
    margin: float
    group_means: dict[str, dict[str, float]] = field(default_factory=dict)
    suggest_freeze: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    floor_pairs: int = 0


# ----------------------------------------------------------------------------------------------------- metrics


def gaussian_kl(a: np.ndarray, b: np.ndarray) -> float:
    """KL(N_a | N_b) of Gaussians fitted to ``a`` and ``b`` (population std); NaN when either std is 0."""
    mu_a, mu_b = float(np.mean(a)), float(np.mean(b))
    sd_a, sd_b = float(np.std(a)), float(np.std(b))
    if sd_a == 0 or sd_b == 0:
        return math.nan
    return math.log(sd_b / sd_a) + (sd_a**2 + (mu_a - mu_b) ** 2) / (2 * sd_b**2) - 0.5


def fd_bins(a: np.ndarray, b: np.ndarray) -> int:
    """Freedman-Diaconis bin count over ``a`` and ``b`` (``n = a.size``), clamped to [5, 512]; ``ceil(√n)`` at IQR 0."""
    both = np.concatenate([a, b])
    n = a.size
    q75, q25 = np.percentile(both, [75, 25])
    iqr = float(q75 - q25)
    span = float(both.max() - both.min())
    if iqr == 0 or span == 0:
        bins = math.ceil(math.sqrt(n))
    else:
        bins = math.ceil(span / (2 * iqr * n ** (-1 / 3)))
    return int(min(max(bins, 5), 512))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def histogram_divergences(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """``(kl_hist, js, n_bins)`` of ``a`` against ``b`` on shared Freedman-Diaconis edges (see the module docstring)."""
    bins = fd_bins(a, b)
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    p = np.histogram(a, edges)[0] + HIST_EPS
    q = np.histogram(b, edges)[0] + HIST_EPS
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    return max(_kl(p, q), 0.0), max(0.5 * _kl(p, m) + 0.5 * _kl(q, m), 0.0), bins


def paired_distances(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(rel_l2, cos_dist)``; NaN where a norm is 0."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    rel = float(np.linalg.norm(a - b)) / na if na > 0 else math.nan
    cos = 1.0 - float(np.dot(a, b)) / (na * nb) if na > 0 and nb > 0 else math.nan
    return rel, min(max(cos, 0.0), 2.0) if math.isfinite(cos) else cos


def _metrics(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    kl_hist, js, bins = histogram_divergences(a, b)
    rel, cos = paired_distances(a, b)
    return {"kl_gauss": gaussian_kl(a, b), "kl_hist": kl_hist, "n_bins": bins, "js": js, "rel_l2": rel,
            "cos_dist": cos}


# ----------------------------------------------------------------------------------------------------- inputs


def load_state_dict(source: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint (``weights_only=True``): an rsvheat checkpoint, a pretraining ``state.pt`` or a plain
    state dict.

    Raises:
        ValueError: the file holds no state dict.
    """
    if isinstance(source, Mapping):
        return dict(source)
    data = torch.load(Path(source), map_location="cpu", weights_only=True)
    if isinstance(data, Mapping):
        for key in ("state_dict", "model"):  # rsvheat.save_checkpoint; jobs/pretrain.py state.pt
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            return dict(data)
    raise ValueError(
        f"{source} holds no state dict: expected an rsvheat checkpoint ({{'meta', 'state_dict'}}), a "
        "jobs/pretrain.py state.pt ({'model': ...}) or a plain {name: tensor} dict."
    )


def _compared(key: str, value: torch.Tensor, include_1d: bool) -> str | None:
    """Why ``key`` is not compared, or None when it is."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf in _SKIP_LEAVES:
        return "statistic or derived tensor"
    if not value.is_floating_point():
        return f"not floating point ({value.dtype})"
    if value.ndim < 2 and leaf not in _OWN_ROWS and not include_1d:
        return "1-D (norms, biases): pass include_1d"
    return None


def _stage(key: str, pattern: re.Pattern[str]) -> str:
    match = pattern.search(key)
    if match is None:
        return ""
    groups = match.groupdict()
    if groups.get("stem"):
        return "stem"
    if groups.get("down") is not None:
        return str(int(groups["down"]) + 1)  # downsamples.i leads into stages.{i+1}
    value = groups.get("stage") or groups.get("out")
    if value is not None:
        return value
    if groups:
        return ""
    return match.group(1) if match.groups() else match.group(0)


def _group(key: str, groups: Mapping[str, re.Pattern[str]]) -> str:
    return next((name for name, pattern in groups.items() if pattern.search(key)), "other")


# ----------------------------------------------------------------------------------------------------- floor


def noise_floor(
    seeds: Sequence[Mapping[str, torch.Tensor]], layers: Sequence[str], metric: Metric = "rel_l2"
) -> tuple[dict[str, float], int]:
    """Per layer ``mean + 2·std`` (sample std) of ``metric`` over every pair of seed runs; one pair: its value.

    Returns:
        The floor per layer (NaN where a run lacks the layer) and the number of pairs.

    Raises:
        ValueError: fewer than two seed runs.
    """
    if len(seeds) < 2:
        raise ValueError(f"The noise floor needs at least 2 seed runs (3 or more recommended), got {len(seeds)}.")
    pairs = list(itertools.combinations(range(len(seeds)), 2))
    floor = {}
    for layer in layers:
        values = []
        for i, j in pairs:
            if layer not in seeds[i] or layer not in seeds[j] or seeds[i][layer].shape != seeds[j][layer].shape:
                break
            a, b = (_flat(seeds[k][layer]) for k in (i, j))
            values.append(_metrics(a, b)[metric])
        else:
            arr = np.asarray(values, np.float64)
            floor[layer] = float(arr.mean() + 2 * arr.std(ddof=1)) if len(arr) > 1 else float(arr[0])
            continue
        floor[layer] = math.nan
    return floor, len(pairs)


def suggest_freeze(layers: Sequence[LayerDivergence], encoder_group: str = "encoder") -> list[str]:
    """The longest prefix of encoder stages (in depth order) whose layers are all ``robust``."""
    order: dict[str, list[str]] = {}
    for row in sorted(layers, key=lambda r: r.depth_idx):
        if row.group == encoder_group and row.stage:
            order.setdefault(row.stage, []).append(row.verdict)
    frozen = []
    for stage, verdicts in order.items():
        if not all(v == "robust" for v in verdicts):
            break
        frozen.append(stage)
    return frozen


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).reshape(-1).numpy()  # any shape -> (n,)


# ----------------------------------------------------------------------------------------------------- main API


def analyze_layer_divergence(
    a: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    b: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    floor: Sequence[str | os.PathLike[str] | Mapping[str, torch.Tensor]] = (),
    groups: Mapping[str, str] | None = None,
    stage_regex: str = DEFAULT_STAGE,
    include_1d: bool = False,
    metric: Metric = "rel_l2",
    margin: float = 0.25,
    out: str | os.PathLike[str] | None = None,
) -> DivergenceReport:
    """Compare two state dicts trained from the same initialisation, layer by layer (see the module docstring).

    Args:
        a: the reference (e.g. trained on clean labels): a checkpoint path or a state dict.
        b: the other run (e.g. trained on noisy labels).
        floor: seed runs of the reference for the noise floor (none: no verdicts).
        groups: ``{group: regex}`` tried in order; default :data:`DEFAULT_GROUPS`.
        stage_regex: finds a key's encoder stage (named groups ``stage``/``out``/``down``/``stem`` as in
            :data:`DEFAULT_STAGE`, or else the first group).
        include_1d: also compare 1-D tensors (norm weights, biases).
        metric: the metric the floor, ratio and verdicts use (``rel_l2`` is the primary one).
        margin: a layer is robust when ``metric ≤ (1 + margin)·floor``.
        out: a directory for ``divergence.csv``, ``divergence.png`` and ``divergence.json``.

    Raises:
        ValueError: an unknown metric, or the two state dicts share no comparable layer.
    """
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}; choose one of {list(METRICS)}.")
    state_a, state_b = load_state_dict(a), load_state_dict(b)
    group_patterns = {k: re.compile(v) for k, v in (groups or DEFAULT_GROUPS).items()}
    stage_pattern = re.compile(stage_regex)
    rows: list[LayerDivergence] = []
    skipped: dict[str, str] = {}
    for key, wa in state_a.items():
        if (why := _compared(key, wa, include_1d)) is not None:
            skipped[key] = why
            continue
        wb = state_b.get(key)
        if wb is None or wb.shape != wa.shape:
            skipped[key] = "not in B" if wb is None else f"shape {tuple(wa.shape)} in A, {tuple(wb.shape)} in B"
            continue
        va, vb = _flat(wa), _flat(wb)
        values = _metrics(va, vb)
        rows.append(LayerDivergence(
            layer=key, group=_group(key, group_patterns), stage=_stage(key, stage_pattern), depth_idx=len(rows),
            n_params=int(va.size), reliable=va.size >= MIN_RELIABLE, **values,  # type: ignore[arg-type]
        ))
    if not rows:
        raise ValueError(
            f"A and B share no comparable layer ({len(state_a)} and {len(state_b)} tensors): compare checkpoints of "
            "one architecture trained from the same initialisation."
        )
    report = DivergenceReport(rows, metric, margin, skipped=skipped)
    if floor:
        floors, report.floor_pairs = noise_floor([load_state_dict(s) for s in floor], [r.layer for r in rows],
                                                 metric)
        for row in rows:
            row.floor = floors[row.layer]
            value = getattr(row, metric)
            if math.isfinite(row.floor) and math.isfinite(value):
                row.ratio = value / row.floor if row.floor > 0 else (math.inf if value > 0 else 0.0)
                row.verdict = "robust" if value <= (1 + margin) * row.floor else "sensitive"
        report.suggest_freeze = suggest_freeze(rows)
    report.group_means = group_means(rows)
    if out is not None:
        write_outputs(report, Path(out))
    return report


def group_means(rows: Sequence[LayerDivergence]) -> dict[str, dict[str, float]]:
    """Per group: each metric's mean over its layers, weighted by parameter count (NaN layers left out)."""
    out: dict[str, dict[str, float]] = {}
    for group in dict.fromkeys(r.group for r in rows):
        members = [r for r in rows if r.group == group]
        means: dict[str, float] = {"n_params": float(sum(r.n_params for r in members)), "layers": float(len(members))}
        for name in METRICS:
            pairs = [(getattr(r, name), r.n_params) for r in members if math.isfinite(getattr(r, name))]
            weight = sum(w for _, w in pairs)
            means[name] = sum(v * w for v, w in pairs) / weight if weight else math.nan
        out[group] = means
    return out


# ----------------------------------------------------------------------------------------------------- outputs


def write_outputs(report: DivergenceReport, out: Path) -> dict[str, Path]:
    """``divergence.csv`` (:data:`CSV_COLUMNS`), ``divergence.png`` (metric vs depth, floor band) and
    ``divergence.json`` (group means, suggest_freeze, skipped tensors)."""
    from rsvheat.plot import Series, line_plot_png

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "divergence.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in report.layers:
            writer.writerow({k: _cell(v) for k, v in asdict(row).items()})
    colors = {"encoder": (31, 119, 180), "decoder": (44, 160, 44), "head": (214, 39, 40), "other": (120, 120, 120)}
    series = {}
    for group in dict.fromkeys(r.group for r in report.layers):
        points = [(r.depth_idx, getattr(r, report.metric)) for r in report.layers if r.group == group]
        series[f"{group} {report.metric}"] = Series(points, colors.get(group, (148, 103, 189)), width=2,
                                                    markers=True)
    band = [(r.depth_idx, 0.0, r.floor * (1 + report.margin)) for r in report.layers if math.isfinite(r.floor)]
    line_plot_png(series, out / "divergence.png", title=f"{report.metric} per layer vs depth",
                  xlabel="depth (layer index)", band=band, band_label=f"floor x{1 + report.margin:g}")
    summary = {"metric": report.metric, "margin": report.margin, "floor_pairs": report.floor_pairs,
               "suggest_freeze": report.suggest_freeze, "group_means": report.group_means,
               "skipped": report.skipped}
    (out / "divergence.json").write_text(json.dumps(_plain(summary), indent=2))
    return {name: out / name for name in ("divergence.csv", "divergence.png", "divergence.json")}


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _plain(value: Any) -> Any:
    """JSON-safe: non-finite floats as strings (``""`` for NaN), recursively."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return _cell(value)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rsvheat.divergence A.pt B.pt [--floor SEED.pt ...] --out DIR``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m rsvheat.divergence", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="reference checkpoint (e.g. trained on clean labels)")
    parser.add_argument("b", help="checkpoint to compare (same initialisation, e.g. trained on noisy labels)")
    parser.add_argument("--floor", nargs="+", default=[], help="seed runs of the reference: the noise floor")
    parser.add_argument("--out", required=True, help="directory for divergence.csv, .png and .json")
    parser.add_argument("--metric", default="rel_l2", choices=METRICS, help="metric of the verdicts")
    parser.add_argument("--margin", type=float, default=0.25, help="robust when metric <= (1 + margin) * floor")
    parser.add_argument("--include-1d", action="store_true", help="also compare norms and biases")
    args = parser.parse_args(argv)
    try:
        report = analyze_layer_divergence(args.a, args.b, floor=args.floor, metric=args.metric, margin=args.margin,
                                          include_1d=args.include_1d, out=args.out)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for group, means in report.group_means.items():
        print(f"{group:8s} {int(means['layers']):4d} layers {int(means['n_params']):10d} params  "
              f"rel_l2 {means['rel_l2']:.4g}  js {means['js']:.4g}  kl_gauss {means['kl_gauss']:.4g}")
    if args.floor:
        sensitive = sum(r.verdict == "sensitive" for r in report.layers)
        print(f"{sensitive} of {len(report.layers)} layers above the floor; suggest_freeze: {report.suggest_freeze}")
    print(f"wrote {Path(args.out) / 'divergence.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
