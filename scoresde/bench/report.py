"""Writers for benchmark results: results.json, a Markdown table, and log-log PNG plots of error per cost.

Every writer reads the same JSON-ready payload that `results.json` holds, so tables and plots can be redrawn
from a saved file. A payload has "cases" (label -> summary with "floors" and optionally "reference") and
"records" (one dict per case x sampler x NFE, as `grid.Record`).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")  # files only: no display is assumed
import matplotlib.pyplot as plt  # noqa: E402

from scoresde import atomic  # noqa: E402

Payload = Mapping[str, Any]

# Column titles of the figures exact-score and trained-model cases report, in table order; other figures keep
# their names.
FIGURE_TITLES = {
    "pathwise": "pathwise error",
    "pathwise_fit": "pathwise on fitting paths",
    "sliced_wasserstein": "sliced W2",
    "mmd": "MMD",
    "in_support": "in support",
    "mode_coverage": "mode coverage",
    "frechet_distance": "Fréchet distance",
    "sample_confidence": "confidence",
    "sample_class_entropy": "class entropy",
    "sample_bits_per_dim": "sample bits/dim",
    "sample_nll_nats": "sample NLL (nats)",
    "mode_weights": "mode weights",
    "mode_means": "mode means",
    "mode_covs": "mode covs",
}
PLOTTED_FIGURES = ("pathwise", "sliced_wasserstein", "frechet_distance")
AXES = {"nfe": "score evaluations (NFE)", "run_s": "wall time per solve (s)"}


def write_json(path: str | pathlib.Path, payload: Payload) -> None:
    """Writes payload as indented JSON (non-finite numbers must already be None)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _ordered(names) -> list[str]:
    """Figure names in table order: those of FIGURE_TITLES first, then the rest alphabetically."""
    return [n for n in FIGURE_TITLES if n in names] + sorted(set(names) - set(FIGURE_TITLES))


def _figure_names(payload: Payload) -> list[str]:
    return _ordered({name for record in payload["records"] for name in record["figures"]})


def _listing(figures: Mapping[str, float | None]) -> str:
    return ", ".join(f"{FIGURE_TITLES.get(n, n)} {_number(figures[n])}" for n in _ordered(figures))


def _case_heading(label: str, summary: Mapping[str, Any]) -> list[str]:
    lines = [f"### {label}", ""]
    if "reference" in summary:
        ref = summary["reference"]
        lines.append(f"Pathwise reference: {ref['sampler']}, {ref['nfe']} NFE, {1e3 * ref['run_s']:.1f} ms.")
        distribution = {n: v for n, v in ref.get("figures", {}).items() if n != "pathwise"}
        if distribution:
            lines.append(f"Its own distribution errors (what a converged ODE sampler scores from this x_T): "
                         f"{_listing(distribution)}.")
    if summary.get("floors"):
        source = summary.get("floors_from", f"{summary['num_samples']} exact vs exact draws")
        lines.append(f"Monte Carlo floors ({source}): {_listing(summary['floors'])}.")
    if summary.get("model"):
        lines.append(f"Model: {_listing(summary['model'])}.")
    return lines + [""]


def _cell(record: Mapping[str, Any] | None, figure: str) -> str:
    """A figure of a record; on a fitted grid with the same figure on its fitting paths beside it."""
    if record is None:
        return _number(None)
    text = _number(record["figures"].get(figure))
    beside = record["figures"].get(figure + "_fit")
    return text if beside is None else f"{text} ({_number(beside)})"


def pivot(payload: Payload, case: str, figure: str) -> str:
    """One figure of one case: a row per sampler, a column per target NFE (at most that many are used); on
    fitted grids the figure on the fitting paths is in brackets."""
    records = [r for r in payload["records"] if r["case"] == case]
    nfes = sorted({r["nfe_target"] for r in records})
    values = {(r["sampler"], r["nfe_target"]): r for r in records}
    floor = payload["cases"][case].get("floors", {}).get(figure)
    title = FIGURE_TITLES.get(figure, figure) + ("" if floor is None else f" (floor {_number(floor)})")
    if any(figure + "_fit" in r["figures"] for r in records):
        title += " (fitted: on fitting paths)"
    lines = [f"| {title} | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---:|" * len(nfes)]
    for sampler in dict.fromkeys(r["sampler"] for r in records if r["figures"].get(figure) is not None):
        cells = [_cell(values.get((sampler, n)), figure) for n in nfes]
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


FRONTIER_NFES = (5, 10)
FRONTIER_SIZE = 3


def frontier(payload: Payload) -> list[str]:
    """The few-step frontier: per case, at 5 and 10 NFE, the samplers of smallest pathwise error."""
    lines = []
    for n in FRONTIER_NFES:
        for case in payload["cases"]:
            cells = sorted((r["figures"]["pathwise"], r["sampler"]) for r in payload["records"]
                           if r["case"] == case and r["nfe_target"] == n and r["figures"].get("pathwise"))
            if cells:
                best = ", ".join(f"{sampler} {_number(error)}" for error, sampler in cells[:FRONTIER_SIZE])
                lines.append(f"| {case} | {n} | {best} |")
    if not lines:
        return []
    head = ["### Few-step frontier", "", "| case | NFE | smallest pathwise errors |", "|---|---:|---|"]
    return head + lines + [""]


def markdown(payload: Payload) -> str:
    """The few-step frontier, then per case the plotted figures by sampler and NFE and all figures, each
    beside its floor."""
    names = _figure_names(payload)
    titles = [FIGURE_TITLES.get(n, n) for n in names]
    out = frontier(payload)
    for label, summary in payload["cases"].items():
        floors = summary.get("floors", {})
        out += _case_heading(label, summary)
        for name in PLOTTED_FIGURES:
            if name in names:
                out += [pivot(payload, label, name), ""]
        fitted = any(r.get("fit_s") is not None for r in payload["records"])
        out.append("| sampler | NFE | " + " | ".join(titles) + " | compile (s) | run (ms) |"
                   + (" fit (s) |" if fitted else ""))
        out.append("|---|---:|" + "---:|" * (len(names) + 2 + fitted))
        for r in (r for r in payload["records"] if r["case"] == label):
            cells = [_number(r["figures"].get(n)) + (f" ({_number(floors[n])})" if n in floors else "")
                     for n in names]
            fit = f" {_number(r.get('fit_s'))} |" if fitted else ""
            out.append(f"| {r['sampler']} | {r['nfe']} | " + " | ".join(cells)
                       + f" | {r['compile_s']:.2f} | {1e3 * r['run_s']:.2f} |" + fit)
        out.append("")
    return "\n".join(out)


def plot_errors(path: str | pathlib.Path, payload: Payload, x_axis: str = "nfe") -> None:
    """Log-log error against cost, one panel per case and figure, one line per sampler; floors dashed.

    Args:
      path: PNG to write.
      payload: benchmark results.
      x_axis: "nfe" (score evaluations) or "run_s" (median wall time per solve).
    """
    if x_axis not in AXES:
        raise ValueError(f"unknown x axis {x_axis!r}; valid names: {sorted(AXES)}.")
    names = [n for n in PLOTTED_FIGURES if n in _figure_names(payload)]
    cases = list(payload["cases"])
    legend_width = 1.8  # inches on the right
    size = (3.6 * len(cases) + legend_width, 3.0 * len(names))
    fig, axes = plt.subplots(len(names), len(cases), figsize=size, dpi=90, squeeze=False)
    samplers = list(dict.fromkeys(r["sampler"] for r in payload["records"]))
    for col, case in enumerate(cases):
        for row, name in enumerate(names):
            ax = axes[row, col]
            for i, sampler in enumerate(samplers):
                points = sorted((r[x_axis], r["figures"][name]) for r in payload["records"]
                                if r["case"] == case and r["sampler"] == sampler and r["figures"].get(name))
                if points:
                    ax.plot(*zip(*points), marker="o", markersize=3, color=f"C{i % 10}", label=sampler)
            floor = payload["cases"][case].get("floors", {}).get(name)
            if floor:
                ax.axhline(floor, color="0.5", linestyle="--", linewidth=1, label="Monte Carlo floor")
            ax.set(xscale="log", yscale="log", xlabel=AXES[x_axis],
                   title=f"{case}: {FIGURE_TITLES.get(name, name)}")
            ax.grid(True, which="major", linewidth=0.3)
    legend = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(legend.values(), legend.keys(), loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - legend_width / fig.get_figwidth(), 1))
    with atomic.replacing(path) as temporary:
        fig.savefig(temporary)
    plt.close(fig)


def write_report(outdir: str | pathlib.Path, payload: Payload) -> list[pathlib.Path]:
    """Writes results.json, results.md, error_vs_nfe.png, error_vs_time.png into outdir; returns the paths."""
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    names = ("results.json", "results.md", "error_vs_nfe.png", "error_vs_time.png")
    paths = [outdir / name for name in names]
    write_json(paths[0], payload)
    atomic.write_text(paths[1], markdown(payload).rstrip("\n") + "\n")
    plot_errors(paths[2], payload, "nfe")
    plot_errors(paths[3], payload, "run_s")
    return paths
