"""The real-code evaluation set shipped in `data/realworld/`: function-level episodes of
permissively licensed pure-Python projects from PyPI, cut from the projects' own test suites
by the `tests:` source with `--check-harness`, each kept as the call its harness makes (the
program is the function's file, shipped under `project-files/`, and a `main` returning the call),
so that the programs import what they import. `tracekit dataset build realworld` traces them.

    make realworld     # python -m tracekit.evals.realworld -o data/realworld

A download that fails exits 1 with one line naming the project and the fix.

Never train on it: `held_out_programs` (tracekit/training/run.py) keeps it out of every
training run.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
from pathlib import Path

from tracekit.datasets import build as dataset
from tracekit.datasets.files import load_rows
from tracekit.programs import pypi, sources
from tracekit.programs.suites import EpisodeOptions

# name -> (version, licence): the projects `make realworld` downloads (pure Python, MIT or
# BSD, tests in their source distributions)
PROJECTS = {"inflection": ("0.5.1", "MIT"), "more-itertools": ("10.5.0", "MIT"),
            "toolz": ("1.0.0", "BSD-3-Clause")}
PER_PROJECT = 150  # episodes drawn from each project (seeded)
SETTINGS = EpisodeOptions(per_function=3, check_harness=True)


def make(checkouts: list[Path], out: Path, per_project: int = PER_PROJECT, seed: int = 0,
         workers: int | None = None) -> list[dict]:
    """Build `tests:` of each checkout with --check-harness, draw `per_project` episodes
    whose harness reproduced them, and write them with the projects' source files and
    licences under `out`. Returns the rows written (also `out/realworld.jsonl`)."""
    rows = []
    for checkout in checkouts:
        suites = list(sources.from_specs([f"tests:{checkout}"], episodes=SETTINGS))
        name = checkout.name.rsplit("-", 1)[0]
        target = out / "project-files" / name
        with tempfile.TemporaryDirectory(prefix="tracekit-realworld-") as work:
            dataset.build(suites, Path(work) / "ds", workers=workers)
            episodes = load_rows(Path(work) / "ds")
        episodes = sorted(episodes, key=lambda row: row["id"])
        random.Random(f"{seed}:{name}").shuffle(episodes)
        if target.exists():
            shutil.rmtree(target)
        for relative in suites[0].files:  # the project's own files, not its tests
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(checkout / relative, target / relative)
        for licence in sorted(checkout.glob("LICEN[CS]E*")):
            shutil.copy2(licence, target / licence.name)
        root = suites[0].roots[0]
        for row in sorted(episodes[:per_project], key=lambda row: row["id"]):
            rows.append({"id": f"{name}/{row['id']}", "project": name, "root": root,
                         "file": row["file"], "module": row["module"],
                         "function": row["function"], "test": row["test"],
                         "args": row["args"], "call": row["call"], "expected": None})
    _write(out, rows)
    # traced once more as shipped (from the copies under project-files/): what main returns is
    # each row's expected value; a program that does not run from the copies is left out
    with tempfile.TemporaryDirectory(prefix="tracekit-realworld-") as work:
        dataset.build(sources.realworld(out / "realworld.jsonl"), Path(work) / "ds",
                      workers=workers)
        traced = {row["id"]: row for row in load_rows(Path(work) / "ds")}
    kept = []
    for row in rows:
        trace = traced.get(row["id"])
        if trace is not None and trace["status"] in ("ok", "raised"):
            kept.append({**row, "expected": trace["return_value"], "status": trace["status"]})
    _write(out, kept)
    return kept


def _write(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "realworld.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("build/realworld"),
                        help="where the source distributions are downloaded and unpacked")
    parser.add_argument("--per-project", type=int, default=PER_PROJECT)
    args = parser.parse_args()
    try:
        checkouts = [c.resolve() for c in pypi.download(PROJECTS, args.work)]
    except pypi.DownloadError as exc:
        raise SystemExit(f"error: {exc}") from None
    rows = make(checkouts, args.output, args.per_project)
    print(f"{len(rows)} episodes from {len(checkouts)} projects in {args.output}")


if __name__ == "__main__":
    main()
