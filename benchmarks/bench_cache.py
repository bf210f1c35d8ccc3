"""The stage cache, as whole `kedro run` processes on the full corpus (same machine, same run):

1. a first full run (``kedro run --force``: every node runs and its cache record is written),
2. a second run with nothing changed (every node should be skipped),
3. a run with only one late parameter changed (default ``data_processing.split_salt``, which
   re-runs ``vectorize`` only; pass ``--param generate.<name>=<value>`` once the generate
   pipeline is registered — the value gets a unique suffix per repeat).

Kedro start-up is measured as ``kedro run --runner=bench_cache.StartupOnlyRunner``: the same
process (CLI, plugins, session, hooks, catalog, dataset warm-up) with a runner that runs and
checks no node; "outside start-up" = a run's wall time minus that. Also reported: the runner's own time from Kedro's log
("Pipeline execution completed successfully in …"). Target: the no-change run spends < 5 % of the
first run's time outside start-up.

    python benchmarks/bench_cache.py [--quick] [--repeats N] [--param KEY=VALUE]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402
from kedro.runner import AbstractRunner  # noqa: E402

KEDRO = str(Path(sys.executable).with_name("kedro"))
ENV = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "COLUMNS": "200"}
ENV.pop("TANGSHI_FORCE_RUN", None)
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), ENV.get("PYTHONPATH")]))


class StartupOnlyRunner(AbstractRunner):
    """`kedro run --runner=bench_cache.StartupOnlyRunner`: everything `kedro run` does (CLI,
    plugins, session, hooks, catalog and dataset warm-up) except running or checking nodes."""

    def _get_executor(self, max_workers):
        return None

    def _run(self, pipeline, catalog, hook_manager=None, run_id=None):
        return None


RUNNER = re.compile(r"completed\s+successfully\s+in\s+([\d.]+)\s+sec", re.S)
SKIPPED = re.compile(r"Skipping node (\S+): up to date")


def timed(cmd: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.stderr.write(out[-4000:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    runner = RUNNER.search(re.sub(r"\s+", " ", out))
    return {"wall_s": round(wall, 3), "runner_s": float(runner.group(1)) if runner else None,
            "skipped": len(SKIPPED.findall(re.sub(r"\s+", " ", out)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat of each (noisy)")
    parser.add_argument("--param", default="data_processing.split_salt=bench",
                        help="the one parameter the third run changes (KEY=VALUE)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    if not Path("data/01_raw/tang/MANIFEST.json").is_file():
        raise SystemExit("the corpus is missing: run `make data` first")

    runs: dict[str, list[dict]] = {"startup": [], "first_full": [], "no_change": [], "param_changed": []}
    for i in range(repeats):
        runs["startup"].append(timed([KEDRO, "run", "--runner=bench_cache.StartupOnlyRunner"]))
        runs["first_full"].append(timed([KEDRO, "run", "--force"]))
        runs["no_change"].append(timed([KEDRO, "run"]))
        runs["param_changed"].append(timed([KEDRO, "run", f"--params={args.param}-{i}-{time.time_ns()}"]))
        print(f"repeat {i + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]['wall_s']:.2f} s" for k, v in runs.items()),
              flush=True)
    subprocess.run([KEDRO, "run"], env=ENV, check=True, capture_output=True)  # back to the default params

    # Minimum over repeats: the least disturbed run (medians are reported too).
    med = {k: min(r["wall_s"] for r in v) for k, v in runs.items()}
    median = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    outside = {k: med[k] - med["startup"] for k in ("first_full", "no_change", "param_changed")}
    runner = {k: statistics.median(r["runner_s"] for r in runs[k]) for k in outside}
    ratio = outside["no_change"] / outside["first_full"]
    results = {"runs": runs, "min_wall_s": med, "median_wall_s": median, "outside_startup_s": outside, "runner_s": runner,
               "no_change_ratio_outside_startup": round(ratio, 4),
               "no_change_ratio_runner": round(runner["no_change"] / runner["first_full"], 4),
               "changed_param": args.param, "repeats": repeats, "target_ratio": 0.05}
    write_results("cache", results, [
        ("repeats (wall = min over repeats; median in brackets)", str(repeats)),
        ("Kedro start-up (`kedro run` with a runner that does nothing), wall (s)",
         f"{med['startup']:.2f} ({median['startup']:.2f})"),
        ("first full run `kedro run --force`, wall (s)", f"{med['first_full']:.2f} ({median['first_full']:.2f})"),
        ("no-change `kedro run`, wall (s)", f"{med['no_change']:.2f} ({median['no_change']:.2f})"),
        (f"only `{args.param}` changed, wall (s)", f"{med['param_changed']:.2f} ({median['param_changed']:.2f})"),
        ("no-change / first, outside start-up (wall − start-up)",
         f"{outside['no_change']:.2f} s / {outside['first_full']:.2f} s = {ratio:.1%} (target < 5 %)"),
        ("no-change / first, runner time from Kedro's log",
         f"{runner['no_change']:.2f} s / {runner['first_full']:.2f} s = {runner['no_change'] / runner['first_full']:.1%}"),
        ("param changed / first, runner time",
         f"{runner['param_changed']:.2f} s / {runner['first_full']:.2f} s"),
    ])
    print(f"cache: no-change run {ratio:.1%} of the first run outside start-up "
          f"(runner {runner['no_change']:.2f} s vs {runner['first_full']:.2f} s)")


if __name__ == "__main__":
    main()
