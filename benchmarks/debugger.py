"""`tracekit debug`'s step on the bundled model: ours (a session that keeps the prompt's cache,
so a step runs only the new tokens and `back` rewinds) against re-sending the whole prompt for
every step (what Meta's cwmdbg does against its server), both on our runtime, same model.

A scripted session of --steps `step` commands (with a `back` and a re-step every --back-every
steps; a `reset` when the trace ends or fills the model's context) runs through the
debugger's own Track both ways; the predicted frames are asserted identical (greedy), then
steps per second are printed with the ratio.

    python benchmarks/debugger.py [--steps 100] [--model bundled] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracekit.debugger import ModelStepper, Program, Track  # noqa: E402
from tracekit.predict import GREEDY, load_predictor  # noqa: E402
from tracekit.sandbox import run_trace  # noqa: E402

PROGRAM = """\
def f(nums):  # << START_OF_TRACE
    total = 0
    for x in nums:
        if x % 2 == 0:
            total += x
        else:
            total -= 1
    return total
"""


class ResendingStepper(ModelStepper):
    """Every step sends the context and every frame so far (no cache kept)."""

    def predict(self, frames, force_event):
        return self.predictor.next_frame(self.context, frames, force_event, self.sampling)


def session(track: Track, steps: int, back_every: int) -> tuple[float, list]:
    """Run the scripted session; seconds taken and every frame the steps landed on."""
    seen = []
    start = time.perf_counter()
    done = 0
    while done < steps:
        track.save()
        stop = track.step()
        done += 1
        if stop.reason:  # ended, or the context is full: start again
            track.reset()
            continue
        seen.append(track.current)
        if back_every and done % back_every == 0 and done < steps:
            track.back()
            track.save()
            track.step()
            done += 1
            seen.append(track.current)
    return time.perf_counter() - start, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--back-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = load_predictor(args.model)
    trace = run_trace(PROGRAM, "f(list(range(12)))")
    program = Program(trace.context)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch "
          f"{torch.__version__}, model {args.model}, {args.steps} steps "
          f"(back and re-step every {args.back_every})")
    results = {}
    for name, stepper in [("ours (cached session)", ModelStepper), ("re-sending the prompt",
                                                                    ResendingStepper)]:
        track = Track(stepper(predictor, trace.context, GREEDY), trace.frames[:1], program)
        session(track, 5, 0)  # warm up
        track = Track(stepper(predictor, trace.context, GREEDY), trace.frames[:1], program)
        seconds, seen = session(track, args.steps, args.back_every)
        results[name] = (seconds, seen)
        print(f"{name:<24} {args.steps / seconds:7.1f} steps/s  ({seconds * 1000 / args.steps:.0f} "
              "ms a step)")
    (ours, ours_seen), (theirs, theirs_seen) = results.values()
    print(f"ratio: ours {theirs / ours:.2f}x the steps/s of re-sending the prompt")
    same = [(a.event, a.source, a.locals, a.arg) for a in ours_seen] == \
        [(b.event, b.source, b.locals, b.arg) for b in theirs_seen]
    assert same, "the two ways predicted different frames"


if __name__ == "__main__":
    main()
