"""`scoresde bench samplers | overhead`: settings from command-line overrides, the run, its files."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Mapping

import jax

from scoresde import atomic
from scoresde.bench import overhead, report, trained
from scoresde.bench.exact import QUICK, ExactBench, bench_exact
from scoresde.samplers.base import require


def settings_from(base: Any, overrides: Mapping[str, Any], command: str) -> Any:
    """`base` (a settings dataclass) with the given fields replaced; lists become tuples, NFEs integers."""
    valid = [f.name for f in dataclasses.fields(base)]
    unknown = sorted(set(overrides) - set(valid))
    require(not unknown, f"{command} does not take {['--' + k for k in unknown]}; its settings are {valid}.")
    values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in overrides.items()}
    if "nfes" in values:
        require(all(str(n).strip().isdigit() for n in values["nfes"]),
                f"--nfes must be positive integers; got {','.join(map(str, values['nfes']))}.")
        values["nfes"] = tuple(int(n) for n in values["nfes"])
    return dataclasses.replace(base, **values)


def _device() -> str:
    return f"{jax.devices()[0].device_kind} ({jax.default_backend()})"


def samplers_command(
    overrides: Mapping[str, Any], *, quick: bool, outdir: str | None, progress: bool
) -> dict[str, Any]:
    """Runs the exact-score leaderboard, or with a workdir the trained-model one, and writes results.json,
    results.md and two PNG plots into outdir."""
    if "workdir" in overrides:
        base = trained.QUICK if quick else trained.TrainedBench()
        settings = settings_from(base, overrides, "bench samplers")
        results, problem = trained.bench_trained(settings, progress=progress), settings.workdir
    else:
        settings = settings_from(QUICK if quick else ExactBench(), overrides, "bench samplers")
        results, problem = bench_exact(settings, progress=progress), settings.problem
    payload = {"problem": problem, "device": _device(), "settings": dataclasses.asdict(settings),
               **results.to_json()}
    paths = report.write_report(pathlib.Path(outdir or "out/bench/samplers"), payload)
    print(report.markdown(payload))
    print("wrote " + ", ".join(map(str, paths)))
    if results.stopped:
        print(f"{results.stopped}: stopped after {len(results.records)} runs; the report holds those (its "
              f"'stopped' field says so), the same command measures the whole grid again.")
    return payload


def overhead_command(
    overrides: Mapping[str, Any], *, quick: bool, outdir: str | None, progress: bool
) -> dict[str, Any]:
    """Runs the loop-overhead benchmark and writes overhead.json and overhead.md into outdir."""
    base = overhead.QUICK if quick else overhead.OverheadBench()
    settings = settings_from(base, overrides, "bench overhead")
    payload = {"device": _device(), "settings": dataclasses.asdict(settings),
               "rows": overhead.bench_overhead(settings, progress=progress)}
    out = pathlib.Path(outdir or "out/bench/overhead")
    report.write_json(out / "overhead.json", payload)
    atomic.write_text(out / "overhead.md", overhead.markdown(payload["rows"]) + "\n")
    print(overhead.markdown(payload["rows"]))
    print(f"wrote {out / 'overhead.json'}, {out / 'overhead.md'}")
    return payload


COMMANDS: dict[str, Callable[..., dict]] = {"samplers": samplers_command, "overhead": overhead_command}


def run(what: str, overrides: Mapping[str, Any], *, quick: bool = False, outdir: str | None = None,
        progress: bool = True) -> dict:
    """`scoresde bench WHAT`: runs the named benchmark with settings overridden by command-line flags.

    Args:
      what: "samplers" or "overhead".
      overrides: settings field -> value given on the command line (e.g. {"nfes": ["10", "20"]}).
      quick: start from the command's small grid instead of its full one.
      outdir: where the files go (default out/bench/<what>).
      progress: show a progress bar.

    Returns:
      The payload written as JSON.
    """
    require(what in COMMANDS, f"bench needs what to benchmark, one of {sorted(COMMANDS)}; got {what!r}.")
    return COMMANDS[what](overrides, quick=quick, outdir=outdir, progress=progress)
