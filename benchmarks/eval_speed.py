"""`tracekit eval` with a model, the old path against the new one, in one run on the same
dataset and model. Teacher-forced: decoding every frame, trace after trace, against exact
match from one forward over each real trace, decoding only the frames the model gets wrong,
those of every trace together. Rollout: one program after another (each through a session
that keeps its cache), against many programs' rollouts decoding together in one batch. Each
is a whole eval run (`evaluate`: load, predict, score with the bootstrap, report). Prints
traces/s, the tokens decoded per second, the share of the prediction time spent in model
forwards, the speed-up (and, teacher-forced, the floor: the time of the one forward over each
real trace alone), and whether the two runs' predictions and metrics are identical (how
many frames, or rollouts, differ).

    python benchmarks/eval_speed.py [--source cruxeval:200] [--model bundled]
                                    [--mode teacher-forced|rollout|both]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracekit.datasets.build import BuildOptions, build  # noqa: E402
from tracekit.evals.run import RunOptions, evaluate  # noqa: E402
from tracekit.model.backends import RuntimeBackend  # noqa: E402
from tracekit.model.modeling import CwmForCausalLM  # noqa: E402
from tracekit.programs import sources  # noqa: E402

PATHS = {  # mode: {path: the RuntimeBackend switch that chooses it}
    "teacher-forced": {"decode every frame": ("exact_from_forward", False),
                       "exact from one forward": ("exact_from_forward", True)},
    "rollout": {"one program at a time": ("batch_conversations", False),
                "programs batched": ("batch_conversations", True)}}


class Clock:
    """Seconds spent in one method (`owner.name`), over every call while it is entered."""

    def __init__(self, owner: type, name: str):
        self.seconds = 0.0
        self.owner, self.name = owner, name
        self.original = getattr(owner, name)

    def __enter__(self):
        clock = self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return clock.original(*args, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - start

        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc):
        setattr(self.owner, self.name, self.original)


def run(data: Path, out: Path, model: str, mode: str, switch: tuple[str, bool]) -> dict:
    setattr(RuntimeBackend, *switch)
    try:
        # every model forward; and those over a whole real trace (teacher-forced) or a prompt
        with Clock(CwmForCausalLM, "forward") as clock, \
                Clock(RuntimeBackend, "_forward") as whole:
            start = time.perf_counter()
            summary, info = evaluate(RunOptions(str(data), mode, model), out)
            seconds = time.perf_counter() - start
    finally:
        setattr(RuntimeBackend, switch[0], True)
    records = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    return {"seconds": seconds, "predict": info["seconds"]["load and predict"],
            "forwards": clock.seconds, "whole": whole.seconds, "traces": summary["traces"],
            "tokens": sum(r.get("tokens", 0) for r in records), "records": records,
            "metrics": {k: v["value"] for k, v in summary["metrics"].items()}}


def compare(mode: str, runs: dict[str, dict]) -> None:
    old, new = runs.values()
    print(f"speed-up: {old['seconds'] / new['seconds']:.1f}x the whole run, "
          f"{old['predict'] / new['predict']:.1f}x predicting")
    if mode == "teacher-forced":  # what no path that reads each real trace can go below
        print(f"floor: the new path's one forward over each real trace took {new['whole']:.1f} s;"
              f" a run of those forwards and nothing else would be "
              f"{old['seconds'] / new['whole']:.1f}x the old path's whole run")
        frames = differ = 0
        for a, b in zip(old["records"], new["records"], strict=True):
            frames += len(a["ids"])
            differ += sum(x != y for x, y in zip(a["ids"], b["ids"], strict=True))
        what = f"{differ} of {frames} frames differ"
    else:
        differ = sum(a["ids"] != b["ids"] for a, b in zip(old["records"], new["records"],
                                                          strict=True))
        what = f"{differ} of {len(old['records'])} rollouts differ"
    changed = {k: (old["metrics"][k], new["metrics"][k]) for k in old["metrics"]
               if old["metrics"][k] != new["metrics"][k]}
    print(f"predictions: {what}; metrics " + ("identical" if not changed
                                               else f"differ: {changed}"), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="cruxeval", help="a source spec (default: all "
                        "800 CRUXEval programs)")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--mode", choices=["teacher-forced", "rollout", "both"], default="both")
    args = parser.parse_args(argv)
    modes = list(PATHS) if args.mode == "both" else [args.mode]
    base = Path(tempfile.mkdtemp(prefix="tracekit-bench-eval-speed-"))
    try:
        build(list(sources.from_specs([args.source])), base / "data", BuildOptions())
        print(f"{platform.machine()}, {torch.get_num_threads()} threads ({os.cpu_count()} CPUs), "
              f"torch {torch.__version__}, Python {platform.python_version()}, "
              f"{time.strftime('%Y-%m-%d')}; {args.source}, model {args.model}, greedy")
        for mode in modes:
            print(f"\n{mode}\n{'path':<24}{'traces':>7}{'total s':>9}{'predict s':>10}"
                  f"{'traces/s':>10}{'tokens':>9}{'tokens/s':>10}{'in forwards':>12}")
            runs = {}
            for name, switch in PATHS[mode].items():
                runs[name] = result = run(base / "data", base / name.replace(" ", "-"),
                                          args.model, mode, switch)
                print(f"{name:<24}{result['traces']:>7}{result['seconds']:>9.1f}"
                      f"{result['predict']:>10.1f}{result['traces'] / result['seconds']:>10.2f}"
                      f"{result['tokens']:>9}{result['tokens'] / result['predict']:>10.0f}"
                      f"{result['forwards'] / result['predict']:>11.0%}", flush=True)
            compare(mode, runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
