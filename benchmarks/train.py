"""Training throughput: our loop's step (tracekit.training.loop) against a plain transformers
CwmForCausalLM loop, same weights, same packed batches, same AdamW; tokens per second and the
ratio, interleaved rounds, median.

    python benchmarks/train.py [--size small] [--seq-len 512] [--batch-rows 4] [--steps 6]
                               [--compile]

Our step runs packed rows with per-trace attention (document_ids); transformers' has no such
mask, so it gets the same tokens as plain causal rows (a little less work for it).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import transformers  # noqa: E402

from tracekit.format.prompts import trace_text  # noqa: E402
from tracekit.format.trace import Trace  # noqa: E402
from tracekit.model.modeling import CwmForCausalLM  # noqa: E402
from tracekit.programs import sources  # noqa: E402
from tracekit.tracer.run import trace_source  # noqa: E402
from tracekit.training import loop  # noqa: E402
from tracekit.training.data import pack, train_tokenizer  # noqa: E402


def batches(rows: loop.Rows, batch_rows: int, steps: int) -> list[dict]:
    config = loop.TrainConfig(batch_rows=batch_rows, seed=0)
    return [rows.batch(loop.step_rows(config, step, len(rows)), "cpu") for step in range(steps)]


def ours_step(model, optimizer, batch, autocast) -> None:
    loss, count = loop.loss_of(model, batch, autocast)
    (loss / count).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def reference_step(model, optimizer, batch, autocast) -> None:
    labels = torch.cat([torch.full_like(batch["targets"][:, :1], -100),
                        batch["targets"][:, :-1]], 1)  # transformers shifts labels itself
    context = (torch.autocast("cpu", dtype=getattr(torch, autocast)) if autocast
               else torch.autocast("cpu", enabled=False))
    with context:
        loss = model(batch["input_ids"], labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", choices=list(loop.SIZES))
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-rows", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="both under bfloat16 autocast")
    parser.add_argument("--compile", action="store_true",
                        help="also ours through torch.compile (tracekit train --compile)")
    args = parser.parse_args()
    traces = [Trace.from_dict(trace_source(p.source, call=p.call, entry=p.entry))
              for p in sources.synthetic(300, seed=2)]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer([trace_text(t) for t in traces], 2048,
                                    Path(tmp) / "tokenizer.json")
    rows = pack(traces, tokenizer, args.seq_len).rows
    config = loop.model_config(args.size, tokenizer.vocab_size, args.seq_len,
                               tokenizer.special_ids)
    torch.manual_seed(0)
    ours = CwmForCausalLM(config)
    loop.init_weights(ours)
    ours.fast = True
    with tempfile.TemporaryDirectory() as tmp:
        from tracekit.model.checkpoint import save_checkpoint

        save_checkpoint(ours, tmp)
        reference = transformers.CwmForCausalLM.from_pretrained(tmp, attn_implementation="sdpa")
    autocast = "bfloat16" if args.bf16 else None
    (ours_adamw,) = loop.optimizer_for(ours, loop.TrainConfig())
    (reference_adamw,) = loop.optimizer_for(reference, loop.TrainConfig())
    runs = {"ours": (ours, ours_adamw, ours_step),
            "transformers": (reference, reference_adamw, reference_step)}
    if args.compile:
        compiled = torch.compile(ours)
        runs["ours compiled"] = (compiled, runs["ours"][1], ours_step)
    work = batches(rows, args.batch_rows, args.steps)
    tokens = sum(int(b["input_ids"].numel()) for b in work)
    for model, optimizer, step in runs.values():  # warm up
        model.train()
        step(model, optimizer, work[0], autocast)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, optimizer, step) in runs.items():
            start = time.perf_counter()
            for batch in work:
                step(model, optimizer, batch, autocast)
            rates[name].append(tokens / (time.perf_counter() - start))
    median = {name: statistics.median(r) for name, r in rates.items()}
    parameters = sum(p.numel() for p in ours.parameters())
    print(f"training, {args.size} ({parameters / 1e6:.1f}M parameters), rows of {args.seq_len} "
          f"tokens x {args.batch_rows}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
          f"{torch.get_num_threads()} threads; Python {platform.python_version()}, torch "
          f"{torch.__version__}, {time.strftime('%Y-%m-%d')}; median of {args.rounds} rounds")
    for name, rate in median.items():
        print(f"  {name:13s} {rate:9.0f} tokens/s")
    print(f"  ours / transformers: {median['ours'] / median['transformers']:.2f}x")
    if args.compile:
        print(f"  ours compiled / ours: {median['ours compiled'] / median['ours']:.2f}x")


if __name__ == "__main__":
    main()
