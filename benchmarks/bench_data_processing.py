"""Wall time and peak RSS of `kedro run --pipeline=data_processing --force` on the full corpus, as a
separate process (Kedro start-up included). Target on the 2-core CPU: ≤ 8 s, ≤ 1.5 GB."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed_process, write_results  # noqa: E402

KEDRO = str(Path(sys.executable).with_name("kedro"))
REPEATS = 3


def main() -> None:
    if not Path("data/01_raw/tang/MANIFEST.json").is_file():
        raise SystemExit("the corpus is missing: run `make data` first")
    # --force: every node runs (the stage cache would otherwise skip them all on repeats).
    runs = [timed_process([KEDRO, "run", "--pipeline=data_processing", "--force"]) for _ in range(REPEATS)]
    report = json.loads(Path("data/03_primary/cleaning_report.json").read_text("utf-8"))
    wall = statistics.median(r["wall_s"] for r in runs)
    peak = max(r["peak_rss_mb"] for r in runs)
    results = {
        "runs": runs, "median_wall_s": wall, "peak_rss_mb": peak,
        "targets": {"wall_s": 8.0, "peak_rss_mb": 1536},
        "raw_poems": report["input_poems"], "clean_poems": report["kept_poems"],
        "characters": report["characters"],
    }
    write_results("data_processing", results, [
        ("wall time, median of 3 (s)", f"{wall:.2f} (target ≤ 8)"),
        ("peak RSS (MB)", f"{peak:.0f} (target ≤ 1536)"),
        ("raw → clean poems", f"{report['input_poems']:,} → {report['kept_poems']:,}"),
    ])
    print(f"data_processing: {wall:.2f} s median wall, {peak:.0f} MB peak RSS")


if __name__ == "__main__":
    main()
