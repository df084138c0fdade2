"""`tracekit debug`'s step on the bundled model: ours (a session that keeps the prompt's cache,
so a step runs only the new tokens and `back` rewinds) against re-sending the whole prompt for
every step (what Meta's cwmdbg does against its server), both on our runtime, same model.

A scripted session of --steps `step` commands (with a `back` and a re-step every --back-every
steps; a `reset` when the trace ends or fills the model's context) runs through the
debugger's own Track both ways, in lockstep (command by command, each way's own work timed, the
first to run alternating, so the VM's slower moments fall on both alike); the predicted frames
are asserted identical (greedy), then steps per second are printed with the ratio.

    python benchmarks/debugger.py [--steps 100] [--model bundled] [--threads 2]
        [--program loop|straight|examples]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracekit.execution.sandbox import run_trace  # noqa: E402
from tracekit.prediction.debugger import ModelStepper, SourceMap, Track  # noqa: E402
from tracekit.prediction.predict import GREEDY, load_predictor  # noqa: E402
from tracekit.programs.sources import SAMPLE_PROGRAMS, python_files  # noqa: E402

LOOP = """\
def f(nums):  # << START_OF_TRACE
    total = 0
    for x in nums:
        if x % 2 == 0:
            total += x
        else:
            total -= 1
    return total
"""
# A trace as long as the context allows without a loop: how long a model's predicted trace
# runs decides the prompt's length, and the prompt's length what re-sending it costs.
STRAIGHT = "def f(a, b):  # << START_OF_TRACE\n" + "".join(
    f"    v{i} = {'a' if i == 0 else f'v{i - 1}'} + {i % 7 + 1}\n"
    f"    w{i} = str(v{i}) + b\n" for i in range(30)) + "    return w29\n"
PROGRAMS = {"loop": (LOOP, "f(list(range(12)))"), "straight": (STRAIGHT, "f(1, 'x')")}


class ResendingStepper(ModelStepper):
    """Every step sends the context and every frame so far (no cache kept); the same context
    limit as ours."""

    def generate(self, frames, force_event, budget):
        return self.predictor.next_frame(self.context, frames, force_event, self.sampling, budget)


def lockstep(tracks: dict[str, Track], steps: int, back_every: int) -> tuple[dict, dict]:
    """Run the scripted session on every track, command by command (the first track to run
    alternating), timing each track's own work; seconds taken and the frames each landed on."""
    seconds = dict.fromkeys(tracks, 0.0)
    seen: dict[str, list] = {name: [] for name in tracks}
    turn = 0

    def each(command) -> list:
        nonlocal turn
        names = list(tracks)
        turn += 1
        results = []
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            start = time.perf_counter()
            results.append(command(tracks[name]))
            seconds[name] += time.perf_counter() - start
        return results

    def step(track: Track):
        track.save()
        return track.step().reason

    done = 0
    while done < steps:
        reasons = set(each(step))
        done += 1
        assert len(reasons) == 1, f"the two ways stopped differently: {reasons}"
        if reasons.pop():  # ended, or the context is full: start again
            each(Track.reset)
            continue
        for name, track in tracks.items():
            seen[name].append(track.current)
        if back_every and done % back_every == 0 and done < steps:
            each(lambda track: (track.back(), step(track)))
            done += 1
            for name, track in tracks.items():
                seen[name].append(track.current)
    return seconds, seen


def measure(predictor, source: str, call: str, steps: int, back_every: int) -> dict:
    """Seconds each way took for the scripted session on one program (after 5 warm-up steps);
    the two ways' frames asserted identical."""
    trace = run_trace(source, call)
    program = SourceMap(trace.context)
    steppers = {"ours (cached session)": ModelStepper, "re-sending the prompt": ResendingStepper}
    warm = {name: Track(stepper(predictor, trace.context, GREEDY), trace.frames[:1], program)
            for name, stepper in steppers.items()}
    lockstep(warm, 5, 0)
    tracks = {name: Track(stepper(predictor, trace.context, GREEDY), trace.frames[:1], program)
              for name, stepper in steppers.items()}
    seconds, seen = lockstep(tracks, steps, back_every)
    ours_seen, theirs_seen = seen.values()
    same = [(a.event, a.source, a.locals, a.arg) for a in ours_seen] == \
        [(b.event, b.source, b.locals, b.arg) for b in theirs_seen]
    assert same, "the two ways predicted different frames"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--back-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--program", choices=[*PROGRAMS, "examples"], default="loop",
                        help="loop: a loop over 12 numbers (the model's trace ends when it "
                        "leaves the loop); straight: 61 lines without a loop; examples: each "
                        "of data/programs/ in turn (--steps each), then the total")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = load_predictor(args.model)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch "
          f"{torch.__version__}, model {args.model}, program {args.program}, {args.steps} steps "
          f"(back and re-step every {args.back_every})")
    if args.program != "examples":
        seconds = measure(predictor, *PROGRAMS[args.program], args.steps, args.back_every)
        for name, taken in seconds.items():
            print(f"{name:<24} {args.steps / taken:7.1f} steps/s  ({taken * 1000 / args.steps:.0f} "
                  "ms a step)")
        ours, theirs = seconds.values()
        print(f"ratio: ours {theirs / ours:.2f}x the steps/s of re-sending the prompt")
        return
    totals, examples = [0.0, 0.0], list(python_files([SAMPLE_PROGRAMS]))
    for example in examples:
        ours, theirs = measure(predictor, example.source, example.call, args.steps,
                               args.back_every).values()
        totals = [totals[0] + ours, totals[1] + theirs]
        print(f"{example.id:<24} ours {ours * 1000 / args.steps:4.0f} ms a step, "
              f"re-sending {theirs * 1000 / args.steps:4.0f} ms: {theirs / ours:.2f}x", flush=True)
    print(f"ratio over all {args.steps} x {len(examples)} steps: ours "
          f"{totals[1] / totals[0]:.2f}x the steps/s of re-sending the prompt")


if __name__ == "__main__":
    main()
