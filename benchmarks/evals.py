"""Eval speed: the whole `tracekit eval` run (load the dataset, predict, score, bootstrap,
plots, report.html/md, metrics.json, frames.parquet) over the 800 CRUXEval traces with the
oracle and copy baselines, in each mode; median of --repeats runs, with loading and
predicting, scoring (with the bootstrap) and writing the report timed apart. The dataset is
built once first (not timed).

    python benchmarks/evals.py [--repeats 3] [--data data/cruxeval/cruxeval.jsonl]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracekit.datasets.build import BuildOptions, build  # noqa: E402
from tracekit.evals.run import RunOptions, evaluate  # noqa: E402
from tracekit.programs import sources  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data/cruxeval/cruxeval.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data}: missing; pass --data with a CRUXEval JSONL file")
    base = Path(tempfile.mkdtemp(prefix="tracekit-bench-evals-"))
    try:
        build(sources.cruxeval(args.data), base / "data", BuildOptions())
        print(f"{platform.node() or 'machine'}: Python {platform.python_version()}, "
              f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; median of {args.repeats}")
        print(f"{'predictor':<10}{'mode':<16}{'traces':>7}{'total s':>9}{'predict s':>10}"
              f"{'score s':>8}{'report s':>9}{'traces/s':>10}")
        for model in ("oracle", "copy"):
            for mode in ("rollout", "teacher-forced", "output"):
                totals, parts, traces = [], [], 0
                for k in range(args.repeats):
                    start = time.perf_counter()
                    summary, info = evaluate(RunOptions(str(base / "data"), mode, model),
                                             base / f"{model}-{mode}-{k}")
                    totals.append(time.perf_counter() - start)
                    parts.append(info["seconds"])
                    traces = summary["traces"]
                total = statistics.median(totals)
                middle = parts[totals.index(sorted(totals)[len(totals) // 2])]
                report = total - middle["load and predict"] - middle["score"]
                print(f"{model:<10}{mode:<16}{traces:>7}{total:>9.2f}"
                      f"{middle['load and predict']:>10.2f}{middle['score']:>8.2f}"
                      f"{report:>9.2f}{traces / total:>10.0f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
