"""The released 32B shapes on one GPU: batch-1 decode at 2k context against the card's
memory-bandwidth limit, and prefill tokens/s. Random bf16 weights made on the GPU (no
download).

    python benchmarks/gpu_runtime.py                   # needs CUDA and ~70 GB of GPU memory
    python benchmarks/gpu_runtime.py --smoke           # tiny shapes on the CPU: checks it runs
    python benchmarks/gpu_runtime.py --decode compiled --no-int8   # compiled steps, bf16 only

Decode steps run up to three ways (`--decode`, comma-separated; default eager,graph): `eager`
(model.forward, one kernel launch per operation), `graph` (model/compiled_decode.py's fixed
step, uncompiled, replayed as a CUDA graph) and `compiled` (the same step compiled, replayed as
a CUDA graph; compiling 64 layers may take minutes, untimed, once for bf16 and once for
int8). Each non-eager way is checked against eager steps over 8 steps (max |logit
difference|, same greedy tokens).

The bandwidth limit is (weight bytes + KV bytes read per token) / the card's bandwidth
(H100 3.35 TB/s, H200 4.8 TB/s; others: pass --bandwidth-tbs). Target: >= 70% in bf16.
Then the same model with weight-only int8 linear layers (model/quantize.py), against its own
limit (int8 weights; embeddings and norms stay bf16).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracekit.model.cache import KVCache  # noqa: E402
from tracekit.model.compiled_decode import decode_steps  # noqa: E402
from tracekit.model.config import CwmConfig  # noqa: E402
from tracekit.model.modeling import CwmForCausalLM, rope_inverse_frequencies  # noqa: E402
from tracekit.model.quantize import FUSED_KERNEL, quantize_int8  # noqa: E402

BANDWIDTH_TBS = {"H100": 3.35, "H200": 4.8}
SMOKE = dict(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=64)


def build(config: CwmConfig, device: str, dtype: torch.dtype) -> CwmForCausalLM:
    """Random weights straight on `device`, one tensor at a time (no full fp32 copy)."""
    with torch.device("meta"):
        model = CwmForCausalLM(config).to(dtype)  # on meta: costs nothing
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
        model.register_buffer("inv_freq", rope_inverse_frequencies(config).to(device),
                              persistent=False)
    model.fast = True
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


DECODES = ("eager", "graph", "compiled")
CHECK_STEPS = 8


def stepper(model: CwmForCausalLM, cache: KVCache, decode: str):
    """One greedy decode step (token (1, 1) -> next token (1, 1) and the logits) the `decode`
    way; eager steps read the cache's Python-side length for their position."""
    if decode == "eager":
        def step(token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = model(token, cache=cache, logits_to_keep=1).logits[:, -1]
            return logits.argmax(-1, keepdim=True), logits
        return step
    fixed = decode_steps(model, cache, compiled=decode == "compiled")

    def step(token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        position = torch.full((1, 1), cache.length, device=token.device)
        logits = fixed(token, position)
        return logits.argmax(-1, keepdim=True), logits
    return step


def prefilled(model: CwmForCausalLM, prompt: torch.Tensor,
              room: int) -> tuple[KVCache, torch.Tensor]:
    """A cache with `room` positions after the prompt, the prompt run; its greedy next token."""
    cache = KVCache(model.config, 1, prompt.shape[1] + room, model.dtype, prompt.device)
    logits = model(prompt, cache=cache, logits_to_keep=1).logits
    return cache, logits[:, -1].argmax(-1, keepdim=True)


@torch.inference_mode()
def measure(model: CwmForCausalLM, device: str, context: int, new: int,
            decode: str) -> tuple[float, float, float]:
    """Prefill tokens/s, batch-1 decode tokens/s, and the host's time to issue one decode
    step (from an idle GPU): near the step's whole time, the step is bound by the CPU."""
    warm = KVCache(model.config, 1, 64, model.dtype, device)  # first calls untimed
    model(torch.zeros(1, 32, dtype=torch.long, device=device), cache=warm, logits_to_keep=1)
    model(torch.zeros(1, 1, dtype=torch.long, device=device), cache=warm, logits_to_keep=1)
    del warm
    prompt = torch.randint(0, model.config.vocab_size, (1, context), device=device)
    sync(device)
    start = time.perf_counter()
    cache, token = prefilled(model, prompt, max(new, CHECK_STEPS) + 3)  # check's size too
    sync(device)
    prefill = context / (time.perf_counter() - start)
    step = stepper(model, cache, decode)
    token, _ = step(token)  # first step (new shapes; compiling; recording) untimed
    sync(device)
    start = time.perf_counter()
    for _ in range(new):
        token, _ = step(token)
    sync(device)
    rate = new / (time.perf_counter() - start)
    start = time.perf_counter()
    step(token)
    issue = time.perf_counter() - start
    sync(device)
    return prefill, rate, issue


@torch.inference_mode()
def check(model: CwmForCausalLM, device: str, context: int, new: int,
          decode: str) -> tuple[float, int]:
    """The `decode` way against eager steps from the same prompt, both fed the eager path's
    greedy tokens: max |logit difference| and how many of CHECK_STEPS greedy tokens agree.
    The caches have measure's size (a new size would compile the step again)."""
    prompt = torch.randint(0, model.config.vocab_size, (1, context), device=device)
    runs, fed = [], []
    for way in ("eager", decode):
        cache, token = prefilled(model, prompt, max(new, CHECK_STEPS) + 3)
        step = stepper(model, cache, way)
        if way == "eager":
            fed = [token]
            for _ in range(CHECK_STEPS):
                chosen, logits = step(fed[-1])
                runs.append(logits.float())
                fed.append(chosen)
        else:
            runs += [step(token)[1].float() for token in fed[:-1]]
    eager, other = torch.cat(runs[:CHECK_STEPS]), torch.cat(runs[CHECK_STEPS:])
    agree = int((eager.argmax(-1) == other.argmax(-1)).sum())
    return (eager - other).abs().max().item(), agree


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on the CPU (there `graph` is the fixed step alone)")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--bandwidth-tbs", type=float)
    parser.add_argument("--decode", default="eager,graph",
                        help=f"ways to run decode steps, comma-separated: {', '.join(DECODES)}")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 model")
    args = parser.parse_args(argv)
    decodes = args.decode.split(",")
    if not decodes or not set(decodes) <= set(DECODES):
        parser.error(f"--decode takes some of {', '.join(DECODES)}, comma-separated")
    if args.smoke:
        device, config, dtype = "cpu", CwmConfig(**SMOKE, dtype="float32"), torch.float32
        args.context, args.new = min(args.context, 96), min(args.new, 4)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run on a GPU machine, or pass --smoke")
        device, config, dtype = "cuda", CwmConfig(), torch.bfloat16
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke)"
    model = build(config, device, dtype)
    tbs = args.bandwidth_tbs or next((v for k, v in BANDWIDTH_TBS.items() if k in name), None)
    print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"context {args.context}; torch {torch.__version__}", flush=True)
    label = "bf16" if dtype == torch.bfloat16 else str(dtype).removeprefix("torch.")
    failed = [decode for decode in decodes if not report(label, model, device, args, tbs, decode)]
    if not args.no_int8:
        quantize_int8(model)  # linear layer by linear layer: the bf16 weights go as it goes
        if device == "cuda":
            torch.cuda.empty_cache()
        failed += [decode for decode in decodes
                   if not report("int8 weight-only", model, device, args, tbs, decode)]
        kernel = "aten's fused int8 kernel" if FUSED_KERNEL.get(device) else "a dequantized copy"
        print(f"int8 products ran through {kernel}")
    if failed:
        sys.exit(f"decode steps failed: {', '.join(failed)} (tracebacks above)")


def report(label: str, model: CwmForCausalLM, device: str, args, tbs: float | None,
           decode: str) -> bool:
    """Print one way's figures; False if it failed (its traceback printed, the other ways'
    figures kept: a GPU machine's time is short)."""
    try:
        print(figures(label, model, device, args, tbs, decode), flush=True)
        return True
    except Exception as error:  # noqa: BLE001 - any failure of one way
        traceback.print_exc()
        print(f"{label}, {decode} decode steps: FAILED: {type(error).__name__}: "
              f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}", flush=True)
        return False


def figures(label: str, model: CwmForCausalLM, device: str, args, tbs: float | None,
            decode: str) -> str:
    config = model.config
    weight_bytes = sum(t.numel() * t.element_size()
                       for t in [*model.parameters(), *model.buffers()] if t.dim() >= 1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prefill, rate, issue = measure(model, device, args.context, args.new, decode)
    line = (f"{label}, {decode} decode steps: {weight_bytes / 1e9:.1f} GB of weights; prefill "
            f"{prefill:,.0f} tok/s; batch-1 decode {rate:,.1f} tok/s ({1e3 / rate:.1f} "
            f"ms/token; the host issues a step in {issue * 1e3:.1f} ms)")
    if device == "cuda":
        line += f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    if tbs:
        per_position = 2 * config.num_key_value_heads * config.head_dim * 2  # K and V, bf16
        kv_bytes = sum(per_position * (args.context if t == "full_attention"
                                       else min(args.context, config.sliding_window))
                       for t in config.layer_types)
        limit = tbs * 1e12 / (weight_bytes + kv_bytes)
        line += f"; bandwidth limit {limit:.1f} tok/s at {tbs} TB/s: {rate / limit:.0%} of it"
    if decode != "eager":
        difference, agree = check(model, device, args.context, args.new, decode)
        line += (f"; against eager steps: max |logit difference| {difference:.3g}, "
                 f"{agree}/{CHECK_STEPS} greedy tokens the same")
    return line


if __name__ == "__main__":
    main()
