"""The bundled model's quality table, measured with `tracekit eval` (95% CIs) beside the copy
baseline, on sets it never trained on: held-out synthetic programs (a seed the training data
does not use), CRUXEval, HumanEval and the real-world functions; the first --limit traces of
each teacher-forced and the first --rollout-limit free-running. The copy baseline is scored
on the very traces the model's run scored (those that fit its context).

    python benchmarks/model_quality.py [--model bundled] [--limit 200] [--rollout-limit 50]
    python benchmarks/model_quality.py --sets CRUXEval     # one set (run several at once)
    python benchmarks/model_quality.py --prepare           # the datasets only
    python benchmarks/model_quality.py --model M --build-max-tokens 1024 --out build/quality
    python benchmarks/model_quality.py --max-tokens 1024   # the traces a 1,024 model reads

Every eval directory is kept under OUT (rerunning resumes them); the table is printed as
markdown, with the per-value-type breakdown of changed values.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACEKIT = [sys.executable, "-m", "tracekit.cli"]
# name: (source spec, extra `dataset build` options)
# ("BOUND": traces over --build-max-tokens CWM tokens are not built; each eval also leaves
# out those over its model's context, in the model's own tokens)
SETS = {
    "held-out synthetic": ("synthetic:600:9001", ["--synthetic-size", "2", "--max-tokens",
                                                  "BOUND"]),
    "CRUXEval": ("cruxeval", []),
    "HumanEval": ("humaneval", ["--max-tokens", "BOUND"]),
    "realworld": ("realworld", ["--max-tokens", "BOUND"]),
}
METRICS = (("state_exact", "state exact"), ("action_exact", "action exact"))
ROLLOUT_BUDGET = 4096  # tokens per free rollout (one stops sooner when its context is full)


def tracekit(*args: str) -> None:
    subprocess.run([*TRACEKIT, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def build(name: str, out: Path, bound: int) -> Path:
    spec, extra = SETS[name]
    directory = out / name.split()[-1].lower()
    if not (directory / "manifest.json").exists():
        tracekit("dataset", "build", spec, "-o", str(directory), "--split", "0,0,1",
                 *[str(bound) if option == "BOUND" else option for option in extra])
    return directory


def run_directory(dataset: Path, model: str, mode: str, out: Path, limit: int | None,
                  max_tokens: int | None = None) -> Path:
    bound = f"-max{max_tokens}" if max_tokens else ""
    return out / f"{dataset.name}-{model.replace('/', '_')}-{mode}-{limit or 'all'}{bound}"


def evaluate(dataset: Path, model: str, mode: str, out: Path, limit: int | None,
             max_tokens: int | None = None) -> dict:
    directory = run_directory(dataset, model, mode, out, limit, max_tokens)
    args = ["eval", str(dataset), "--model", model, "--mode", mode, "-o", str(directory),
            "--budget-tokens", str(ROLLOUT_BUDGET)]
    if limit:
        args += ["--limit", str(limit)]
    if max_tokens:
        args += ["--max-tokens", str(max_tokens)]
    if (directory / "run.json").exists():
        args.append("--resume")
    tracekit(*args)
    return json.loads((directory / "metrics.json").read_text())


def copy_on_the_same(dataset: Path, model_run: Path) -> dict:
    """The copy baseline, teacher-forced, scored on exactly the traces the model's run scored
    (the model leaves out those that do not fit its context; the baseline reads none)."""
    sys.path.insert(0, str(ROOT))
    from tracekit.evals import baselines
    from tracekit.evals.metrics import summarize
    from tracekit.evals.run import RunOptions, load_traces, read_predictions, score

    scored = read_predictions(model_run / "predictions.jsonl")[0]
    traces = [(tid, trace) for tid, trace in load_traces(
        RunOptions(str(dataset), "teacher-forced", "copy"))[0] if tid in scored]
    records = {tid: baselines.predict("copy", trace, "teacher-forced") for tid, trace in traces}
    return summarize(score(traces, records, "teacher-forced")[0])


def cell(metrics: dict, key: str) -> str:
    found = metrics["metrics"][key]
    return f"{found['value']:.1f} [{found['low']:.1f}, {found['high']:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--prepare", action="store_true", help="Build the datasets only.")
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--limit", type=int, default=200,
                        help="Teacher-forced on the first N traces of each set (0: all).")
    parser.add_argument("--rollout-limit", type=int, default=50,
                        help="Free rollouts on the first N traces of each set (0: all).")
    parser.add_argument("--build-max-tokens", type=int, default=4096,
                        help="Build only the traces of at most N CWM tokens (the synthetic, "
                             "HumanEval and real-world sets): 4,096 for the bundled model's "
                             "card; a set built with another N needs another --out.")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="Leave out traces over N of the model's tokens (eval --max-tokens):"
                             " to score a longer-context model on a shorter one's traces.")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "quality4k")
    args = parser.parse_args()
    rows, types = [], []
    for name in args.sets:
        dataset = build(name, args.out, args.build_max_tokens)
        if args.prepare:
            continue
        forced = {args.model: evaluate(dataset, args.model, "teacher-forced", args.out,
                                       args.limit or None, args.max_tokens)}
        forced["copy"] = copy_on_the_same(dataset, run_directory(
            dataset, args.model, "teacher-forced", args.out, args.limit or None,
            args.max_tokens))
        rollout = evaluate(dataset, args.model, "rollout", args.out, args.rollout_limit or None,
                           args.max_tokens)
        for key, label in METRICS:
            rows.append(f"| {name}: {label} | {forced[args.model]['traces']} | "
                        f"{cell(forced['copy'], key)} | {cell(forced[args.model], key)} |")
        rows.append(f"| {name}: output by free rollout | {rollout['traces']} | 0 (by "
                    f"construction) | {cell(rollout, 'output_pass1')} |")
        by_type = forced[args.model]["by_value_type"]
        types.append(f"| {name} | " + " | ".join(
            f"{by_type[t]['value']:.1f} (n={by_type[t]['n']})" if t in by_type else "-"
            for t in ("int", "str", "list", "dict", "bool", "other")) + " |")
    if args.prepare:
        return
    print(f"| measure (teacher-forced unless said) | traces | copy baseline | {args.model} |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nChanged values right, by type ({args.model}, teacher-forced, %):\n")
    print("| set | int | str | list | dict | bool | other |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(types))


if __name__ == "__main__":
    main()
