"""Our CWM runtime against transformers' CwmForCausalLM on the CPU: prefill and greedy decode.

Same random tiny model (8 layers, hidden 512) in both, SDPA attention in both (ours on its fast
path), fp32. Prefill: one forward over the prompts with a cache, median of a few repeats, ours
and transformers interleaved. Decode: greedy generation of N tokens minus that of one token, per
generated token, measured in pairs within each repeat; the ratio is the median of the
per-repeat ratios (this machine's speed drifts by tens of percent within a minute).

    python benchmarks/runtime.py [--prompt 256] [--new 32] [--repeats 5]
    python benchmarks/runtime.py --overhead   # per-token cost of a model with nil compute
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

from tracekit.model.cache import KVCache  # noqa: E402
from tracekit.model.config import CwmConfig  # noqa: E402
from tracekit.model.generation import generate  # noqa: E402
from tracekit.model.modeling import CwmForCausalLM  # noqa: E402

SHAPES = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
              num_attention_heads=8, num_key_value_heads=2, head_dim=64, sliding_window=128,
              max_position_embeddings=4096, bos_token_id=1, eos_token_id=[2], pad_token_id=0,
              layer_types=["full_attention" if i % 4 == 0 else "sliding_attention"
                           for i in range(8)])


def median_times(functions: list, repeats: int) -> list[float]:
    """Median time of each function, run in turn (interleaved, so that a slow spell of the
    machine hits all of them alike)."""
    times = [[] for _ in functions]
    for _ in range(repeats):
        for i, fn in enumerate(functions):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--overhead", action="store_true", help="the same 8 layers with hidden "
                        "64 and vocab 300: what a generated token costs besides arithmetic")
    parser.add_argument("--compile", action="store_true", help="ours with compiled decode "
                        "steps (model/compiled_decode.py; compiling is done before timing)")
    args = parser.parse_args()
    import transformers

    shapes = dict(SHAPES, vocab_size=300, hidden_size=64, intermediate_size=128,
                  head_dim=8) if args.overhead else SHAPES
    torch.manual_seed(0)
    reference = transformers.CwmForCausalLM(
        transformers.CwmConfig(**shapes, attn_implementation="sdpa")).eval()
    ours = CwmForCausalLM(CwmConfig(**shapes, dtype="float32")).eval()
    ours.load_state_dict(reference.state_dict())
    ours.fast = True
    ours.compile_decode = args.compile
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; prompt {args.prompt} tokens, {args.new} new tokens"
          + ("; ours with compiled decode steps" if args.compile else ""))
    if args.overhead:
        prompt = torch.randint(3, shapes["vocab_size"], (1, args.prompt))

        def ours_run(n):
            return lambda: generate(ours, prompt.tolist(), n)

        def reference_run(n):
            return lambda: reference.generate(prompt, max_new_tokens=n, min_new_tokens=n,
                                              do_sample=False, pad_token_id=0)

        if args.compile:  # compile for the timed cache size, untimed
            ours_run(args.new)()
        ours_n, ref_n, ours_1, ref_1 = median_times(
            [ours_run(args.new), reference_run(args.new), ours_run(1), reference_run(1)],
            args.repeats)
        print(f"per generated token, hidden 64: ours {(ours_n - ours_1) / (args.new - 1) * 1e3:.1f}"
              f" ms, transformers {(ref_n - ref_1) / (args.new - 1) * 1e3:.1f} ms")
        return
    print(f"{'batch':>5s} {'prefill tok/s ours':>19s} {'transformers':>13s} {'ratio':>6s}"
          f" {'decode tok/s ours':>18s} {'transformers':>13s} {'ratio':>6s}")
    for batch in map(int, args.batches.split(",")):
        prompts = torch.randint(3, SHAPES["vocab_size"], (batch, args.prompt))

        @torch.no_grad()
        def ours_prefill():
            cache = KVCache(ours.config, batch, args.prompt + 1, torch.float32)
            ours(prompts, cache=cache, logits_to_keep=1)

        @torch.no_grad()
        def reference_prefill():
            reference(prompts, use_cache=True, logits_to_keep=1)

        def ours_generate(n):
            return lambda: generate(ours, prompts.tolist(), n)

        def reference_generate(n):
            return lambda: reference.generate(prompts, max_new_tokens=n, min_new_tokens=n,
                                              do_sample=False, pad_token_id=0)

        if args.compile:  # compile for the timed cache size, untimed
            generate(ours, prompts.tolist(), args.new)
        check = [g.tokens for g in generate(ours, prompts.tolist(), 8)]
        assert check == reference.generate(prompts, max_new_tokens=8, min_new_tokens=8,
                                           do_sample=False, pad_token_id=0)[:, args.prompt:].tolist()
        tokens = batch * args.prompt
        ours_p, ref_p = (tokens / t for t in median_times([ours_prefill, reference_prefill],
                                                          args.repeats))
        decoded = batch * (args.new - 1)
        ours_d, ref_d, ratios = [], [], []
        for _ in range(args.repeats):  # decode rate = (N tokens - 1 token) per repeat, paired
            ours_n, ref_n, ours_1, ref_1 = median_times(
                [ours_generate(args.new), reference_generate(args.new), ours_generate(1),
                 reference_generate(1)], 1)
            ours_d.append(decoded / (ours_n - ours_1))
            ref_d.append(decoded / (ref_n - ref_1))
            ratios.append(ours_d[-1] / ref_d[-1])
        print(f"{batch:5d} {ours_p:19,.0f} {ref_p:13,.0f} {ours_p / ref_p:5.2f}x"
              f" {statistics.median(ours_d):18,.0f} {statistics.median(ref_d):13,.0f}"
              f" {statistics.median(ratios):5.2f}x")


if __name__ == "__main__":
    main()
