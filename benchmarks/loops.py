"""Does a model follow loops? Two measures on programs it never trained on.

1. Stay or leave, teacher-forced: `loops:COUNT:SEED` programs (everyday functions whose loops
   the arguments bound, `tracekit.programs.basic_programs`), traced for real; at each frame that
   comes after a `for`/`while` header, is the model's next line the real one (into the body, or past
   the loop)? Printed beside the rate of always entering the body: a model that has not
   learned when a loop ends scores about that.
2. `set` in the debugger: four one-loop functions; the loop's bound in the call frame edited
   with the debugger's `set` to each of several values, then the model runs greedy to the end
   (`tracekit debug`'s Track). Right when the body ran as many rounds as the real run with that
   bound and the return value is the real one.

    python benchmarks/loops.py [--model bundled] [--programs 60] [--seed 9002]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracekit.execution.sandbox import run_trace  # noqa: E402
from tracekit.format.trace import Trace  # noqa: E402
from tracekit.prediction.debugger import ModelStepper, SourceMap, Track  # noqa: E402
from tracekit.prediction.predict import GREEDY, load_predictor  # noqa: E402
from tracekit.programs.sources import basic  # noqa: E402

MAX_FRAMES = 60  # longer traces are left out of the stay-or-leave count (time on 2 cores)
# name: (source, the body's line, the bound's name, the traced call's bound, the bounds set)
SET_PROBES = {
    "for i in range(n)": (
        "def f(n):  # << START_OF_TRACE\n    total = 0\n    for i in range(n):\n"
        "        total += i\n    return total\n", "total += i", "n", "2",
        ["1", "2", "3", "4", "5", "6"]),
    "while step < limit": (
        "def f(limit):  # << START_OF_TRACE\n    count = 0\n    step = 0\n"
        "    while step < limit:\n        count += step * 2\n        step += 1\n    return count\n",
        "count += step * 2", "limit", "2", ["1", "2", "3", "4", "5", "6"]),
    "while k > 0: k -= 1": (
        "def f(k):  # << START_OF_TRACE\n    acc = 0\n    while k > 0:\n        acc += k\n"
        "        k -= 1\n    return acc\n", "acc += k", "k", "2", ["1", "2", "3", "4", "5", "6"]),
    "for x in items": (
        "def f(items):  # << START_OF_TRACE\n    total = 0\n    for x in items:\n"
        "        total += x\n    return total\n", "total += x", "items", "[5, 6]",
        ["[1]", "[5, 6]", "[1, 2, 3]", "[1, 2, 3, 4]", "[7, 8, 9, 10, 11]"]),
}


def is_header(source: str) -> bool:
    return source.strip().startswith(("for ", "while "))


def stay_or_leave(predictor, programs: int, seed: int) -> tuple[int, int, int]:
    """(decision frames, right, into the body) over the traced `loops` programs."""
    frames = right = into_body = 0
    for program in basic(programs, seed, kind="loops"):
        trace = run_trace(program.source, program.call)
        if not trace.complete or len(trace.frames) > MAX_FRAMES:
            continue
        steps = predictor.teacher_forced(trace.context, trace.frames, GREEDY)
        for previous, real, step in zip(trace.frames, trace.frames[1:], steps[1:]):
            if previous.event != "line" or not is_header(previous.source):
                continue
            frames += 1
            guess = step.frame
            right += guess is not None and (guess.event, guess.source) == (real.event, real.source)
            into_body += real.event == "line" and real.lineno == previous.lineno + 1
    return frames, right, into_body


def set_probe(predictor, start: Trace, source: str, body: str, bound: str,
              value: str) -> tuple[int, int, bool]:
    """(rounds predicted, real rounds, return value right): `set bound = value` at the call
    frame of `start` (the traced call), then greedy to the end."""
    real = run_trace(source, f"f({value})")
    track = Track(ModelStepper(predictor, start.context, GREEDY), start.frames[:1],
                  SourceMap(start.context))
    track.set_value(bound, value)
    track.run_to(set())
    rounds = sum(frame.source.strip() == body for frame in track.frames)
    real_rounds = sum(frame.source.strip() == body for frame in real.frames)
    return rounds, real_rounds, track.frames[-1].arg == real.frames[-1].arg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--programs", type=int, default=60,
                        help="loops programs generated for the stay-or-leave count")
    parser.add_argument("--seed", type=int, default=9002,
                        help="their seed (the bundled model's training data uses none of 9000+)")
    args = parser.parse_args()
    predictor = load_predictor(args.model)
    started = time.perf_counter()

    frames, right, into_body = stay_or_leave(predictor, args.programs, args.seed)
    print(f"model {args.model}; loops:{args.programs}:{args.seed}, traces of at most "
          f"{MAX_FRAMES} frames, teacher-forced")
    print(f"stay or leave after a loop header: {right}/{frames} = {100 * right / frames:.1f}% "
          f"right; always entering the body: {100 * into_body / frames:.1f}%")

    total = correct = 0
    for name, (source, body, bound, start_value, values) in SET_PROBES.items():
        cells = []
        start = run_trace(source, f"f({start_value})")
        for value in values:
            rounds, real_rounds, returned = set_probe(predictor, start, source, body, bound,
                                                      value)
            ok = rounds == real_rounds and returned
            total += 1
            correct += ok
            cells.append(f"{value}: {rounds}/{real_rounds}{'' if returned else ' (return wrong)'}")
        print(f"set {name}: rounds predicted/real  " + ", ".join(cells))
    print(f"set probe: {correct} of {total} right (rounds and return value); "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
