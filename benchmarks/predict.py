"""Trace prediction on the CPU: teacher forcing and stepping sessions, ours against the naive
approaches, on the same random model with CWM's vocabulary.

1. Teacher forcing every frame of real traces of 20, 50 and 100 frames: ours (one prefill of
   the trace, then all branches decoded together over the shared cached prefix) against a fresh
   transformers `generate` per prefix, as most harnesses do. Outputs asserted identical.
2. A 50-step session (predict the next frame, append the real one, repeat) against re-sending
   the whole prompt each step, both on our runtime; and against transformers `generate` per
   step. Outputs asserted identical. Ours decodes with prompt-lookup guesses (`--draft-tokens`,
   default DRAFT_TOKENS = 8 as in RuntimeBackend; 0 for one token per forward); the run prints
   how many tokens a forward yielded, and how many it would yield for a model that wrote the
   real frames.

A random model never writes `<|frame_sep|>`, so each prediction runs to `--frame-tokens`
(default: the traces' median real frame length, what a model that writes the real frame would
generate). Every figure is printed before the outputs are checked; a mismatch then fails the run.

    python benchmarks/predict.py [--layers 8 --hidden 512] [--sizes 20,50,100] [--steps 50]
    python benchmarks/predict.py --device cuda --layers 16 --hidden 2048   # 1.2B parameters
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tracekit.model.generation as generation  # noqa: E402
from tracekit.format.trace import Trace  # noqa: E402
from tracekit.model.backends import RuntimeBackend, TransformersBackend  # noqa: E402
from tracekit.model.config import CwmConfig  # noqa: E402
from tracekit.model.modeling import CwmForCausalLM  # noqa: E402
from tracekit.model.prompt_lookup import DRAFT_TOKENS, PromptLookup, agreement  # noqa: E402
from tracekit.prediction.predict import TracePredictor  # noqa: E402
from tracekit.tracer.run import trace_source  # noqa: E402

PROGRAM = '''
def running_stats(values):  # << START_OF_TRACE
    total, largest = 0, None
    for v in values:
        total += v
        if largest is None or v > largest:
            largest = v
    return total, largest
'''


def real_trace(frames: int) -> Trace:
    """A real trace with at least `frames` frames (cut to exactly that many)."""
    n = frames // 3 + 2
    trace = Trace.from_dict(trace_source(PROGRAM, call=f"running_stats(list(range({n})))"))
    assert len(trace.frames) >= frames
    trace.frames = trace.frames[:frames]
    return trace


def forwards_if_written(predictor: TracePredictor, trace: Trace, steps: int,
                        draft_tokens: int) -> tuple[int, int]:
    """(tokens, forwards) a session would take to decode the real frames with prompt-lookup
    guesses if the model wrote exactly those frames: the guesses' hit rate on real traces,
    whatever model is loaded. A frame's first forward is the prefill of the frame before it."""
    tokens = forwards = 0
    for i in range(steps):
        real = predictor.frame_ids(trace.frames[i])
        lookup = PromptLookup(predictor.prompt(trace.context, trace.frames[:i]))
        done = 0
        while done < len(real):
            guess = lookup.guess(min(draft_tokens, len(real) - done - 1))
            agreed = agreement(guess, real[done:])
            lookup.extend(real[done:done + agreed + 1])
            done += agreed + 1
            forwards += 1
        tokens += len(real)
    return tokens, forwards


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--sizes", default="20,50,100")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--frame-tokens", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true",
                        help="ours with compiled batch-1 decode steps (model/compiled_decode.py)")
    parser.add_argument("--draft-tokens", type=int, default=DRAFT_TOKENS, metavar="N",
                        help="ours: prompt-lookup guesses checked per forward (0: one token "
                             f"per forward; model/prompt_lookup.py; default {DRAFT_TOKENS})")
    args = parser.parse_args(argv)
    import transformers

    shapes = dict(vocab_size=128256, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                  num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=2,
                  head_dim=args.hidden // 8, sliding_window=128, max_position_embeddings=8192,
                  bos_token_id=128000, eos_token_id=[128001], pad_token_id=128004,
                  layer_types=["full_attention" if i % 4 == 0 else "sliding_attention"
                               for i in range(args.layers)])
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    reference = transformers.CwmForCausalLM(
        transformers.CwmConfig(**shapes, attn_implementation="sdpa")).eval()
    reference = reference.to(args.device, dtype)
    ours = CwmForCausalLM(CwmConfig(**shapes, dtype=args.dtype)).eval()
    ours.load_state_dict(reference.state_dict())
    ours = ours.to(args.device)
    ours.fast = True
    ours.compile_decode = args.compile
    sizes = [int(s) for s in args.sizes.split(",")]
    traces = {n: real_trace(n) for n in sizes + [args.steps + 1]}
    probe = TracePredictor(RuntimeBackend(ours))
    frame_tokens = args.frame_tokens or int(statistics.median(
        len(probe.frame_ids(f)) for f in traces[max(sizes)].frames))
    runtime = TracePredictor(RuntimeBackend(ours, draft_tokens=args.draft_tokens),
                             max_frame_tokens=frame_tokens)
    naive = TracePredictor(TransformersBackend(reference), max_frame_tokens=frame_tokens)
    for predictor in (runtime, naive):  # first calls (on a GPU: kernels, cuBLAS) untimed
        predictor.next_frame(traces[sizes[0]].context, max_tokens=2)
    if args.compile:  # compiling, untimed: two cache sizes (then that size is dynamic), a session
        for frames in traces[sizes[0]].frames[:2]:
            runtime.next_frame(traces[sizes[0]].context, [frames], max_tokens=3)
        session = runtime.session(traces[sizes[0]].context)
        session.step()
    params = sum(p.numel() for p in ours.parameters())
    where = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"{where}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; random model: {args.layers} layers, hidden "
          f"{args.hidden}, vocab 128,256 ({params / 1e6:.0f}M parameters), {args.dtype}; "
          f"{frame_tokens} tokens per predicted frame; ours checks {args.draft_tokens} "
          f"prompt-lookup guesses per forward"
          + ("; ours with compiled decode steps" if args.compile else ""))
    mismatches = []
    print(f"{'teacher forcing':16s} {'prompt tokens':>13s} {'ours s':>8s} {'naive s':>8s}"
          f" {'speed-up':>8s}")
    for n in sizes:
        trace = traces[n]
        ours_out, ours_s = timed(lambda: runtime.teacher_forced(trace.context, trace.frames))
        naive_out, naive_s = timed(lambda: [naive.next_frame(trace.context, trace.frames[:i])
                                            for i in range(n)])
        same = sum(a.tokens == b.tokens for a, b in zip(ours_out, naive_out))
        if same != n:
            mismatches.append(f"teacher forcing {n} frames: {n - same} of {n} predictions differ")
        tokens = len(runtime.prompt(trace.context, trace.frames))
        print(f"{f'{n} frames':16s} {tokens:13,d} {ours_s:8.1f} {naive_s:8.1f}"
              f" {naive_s / ours_s:7.1f}x")

    trace = traces[args.steps + 1]

    def session_run():
        session = runtime.session(trace.context)
        out = []
        for frame in trace.frames[:args.steps]:
            out.append(session.step())
            session.append(frame)
        return out

    def resend(predictor):
        return lambda: [predictor.next_frame(trace.context, trace.frames[:i])
                        for i in range(args.steps)]

    counted = []  # forwards: the model's, and compiled decode steps (which bypass forward)
    hook = ours.register_forward_pre_hook(lambda module, args, kwargs: counted.append(1),
                                          with_kwargs=True)
    decode_steps = generation.decode_steps

    def counted_steps(*args):
        step = decode_steps(*args)
        return lambda *inputs: counted.append(1) or step(*inputs)

    generation.decode_steps = counted_steps
    session_out, session_s = timed(session_run)
    generation.decode_steps = decode_steps
    hook.remove()
    resend_out, resend_s = timed(resend(runtime))
    naive_out, naive_s = timed(resend(naive))
    print(f"{args.steps}-step session: {session_s:.1f} s; re-sending the prompt each step: "
          f"ours {resend_s:.1f} s ({resend_s / session_s:.1f}x), transformers generate "
          f"{naive_s:.1f} s ({naive_s / session_s:.1f}x)")
    decoded = sum(len(step.tokens) for step in session_out)
    real_tokens, real_forwards = forwards_if_written(runtime, trace, args.steps,
                                                     args.draft_tokens)
    print(f"session forwards: {len(counted):,d} for {decoded:,d} predicted tokens "
          f"({decoded / len(counted):.2f} tokens per forward with {args.draft_tokens} guesses; "
          f"1.00 without); a model that wrote the real frames: {real_tokens / real_forwards:.2f}")
    for name, other in (("ours re-sending", resend_out), ("transformers", naive_out)):
        differ = sum(a.tokens != b.tokens for a, b in zip(session_out, other))
        if differ:
            mismatches.append(f"session: {differ} of {args.steps} steps differ from {name}")
    if mismatches:
        sys.exit("outputs differ: " + "; ".join(mismatches))


if __name__ == "__main__":
    main()
