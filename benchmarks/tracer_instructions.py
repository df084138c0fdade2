"""Tracer cost in CPU instructions (valgrind --tool=callgrind): repeatable on a noisy machine.

Runs `benchmarks/tracer.py --only NAME` under callgrind for each tracer and for 'none' (loading
and running the programs untraced), and prints each tracer's instructions above 'none', as a
ratio to the minimal settrace loop. Slow (about a minute per tracer); needs valgrind.

    python benchmarks/tracer_instructions.py [--data data/cruxeval/cruxeval.jsonl]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ["none", "minimal settrace loop", "PySnooper", "tracekit", "tracekit + CWM wire text"]


def instructions(name: str, data: Path) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         str(HERE / "tracer.py"), "--only", name, "--data", str(data)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"}).stderr
    return int(re.search(r"Collected : (\d+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parent / "data/cruxeval/cruxeval.jsonl")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    with ThreadPoolExecutor(2) as pool:
        counts = dict(zip(NAMES, pool.map(lambda n: instructions(n, args.data), NAMES)))
    base = counts["minimal settrace loop"] - counts["none"]
    print(f"{'tracer':26s} {'instructions':>14s} {'vs minimal':>11s}")
    for name in NAMES[1:]:
        extra = counts[name] - counts["none"]
        print(f"{name:26s} {extra:14,d} {extra / base:10.2f}x")


if __name__ == "__main__":
    main()
