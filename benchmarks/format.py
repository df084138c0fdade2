"""Wire-format speed on a 2,000-frame trace: render, encode to CWM token ids, parse back.

    python benchmarks/format.py [--rounds 7]

Prints the median time of each step and tokens per second for encoding and parsing (text and
token-id routes), plus the round trip render + encode + parse.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracekit.format.cwm import parse_trace  # noqa: E402
from tracekit.format.prompts import trace_text  # noqa: E402
from tracekit.format.tokenizer import cwm_tokenizer, encode, parse_ids  # noqa: E402
from tracekit.format.trace import Trace  # noqa: E402
from tracekit.tracer.run import trace_source  # noqa: E402

PROGRAM = '''\
def histogram(words):  # << START_OF_TRACE
    counts = {}
    longest = ""
    for i, word in enumerate(words):
        key = word.lower()
        counts[key] = counts.get(key, 0) + 1
        if len(word) > len(longest):
            longest = word
    return counts, longest
'''
CALL = "histogram(['Alpha', 'beta', 'Gamma', 'delta', 'alpha', 'Epsilon', 'beta', 'zeta'] * 70)"


def median_seconds(step, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    trace = Trace.from_dict(trace_source(PROGRAM, call=CALL, max_frames=None))
    trace.frames = trace.frames[:2000]
    tok = cwm_tokenizer()
    text = trace_text(trace)
    ids = encode(tok, text)
    assert parse_trace(text).frames == parse_ids(tok, ids).frames
    assert len(parse_trace(text).frames) == 2000

    steps = {
        "render (template)": lambda: trace_text(trace),
        "encode text -> ids": lambda: encode(tok, text),
        "parse text": lambda: parse_trace(text),
        "parse ids": lambda: parse_ids(tok, ids),
        "render + encode + parse ids": lambda: parse_ids(tok, encode(tok, trace_text(trace))),
    }
    print(f"2,000 frames, {len(text):,} characters, {len(ids):,} tokens; median of {args.rounds};"
          f" Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print(f"{'step':30s} {'ms':>8s} {'tokens/s':>12s}")
    for name, step in steps.items():
        seconds = median_seconds(step, args.rounds)
        print(f"{name:30s} {seconds * 1e3:8.1f} {len(ids) / seconds:12,.0f}")


if __name__ == "__main__":
    main()
