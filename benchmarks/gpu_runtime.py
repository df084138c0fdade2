"""The released 32B shapes on one GPU: batch-1 decode at 2k context against the card's
memory-bandwidth limit, and prefill tokens/s. Random bf16 weights made on the GPU (no
download).

    python benchmarks/gpu_runtime.py            # needs CUDA and ~70 GB of GPU memory
    python benchmarks/gpu_runtime.py --smoke    # tiny shapes on the CPU: checks the script runs
    python benchmarks/gpu_runtime.py --compile  # decode through the compiled step

The bandwidth limit is (weight bytes + KV bytes read per token) / the card's bandwidth
(H100 3.35 TB/s, H200 4.8 TB/s; others: pass --bandwidth-tbs). Target: >= 70% in bf16.
Then the same model with weight-only int8 linear layers (model/quantize.py), against its own
limit (int8 weights; embeddings and norms stay bf16).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.cache import KVCache  # noqa: E402
from model.compiled_decode import decode_step  # noqa: E402
from model.config import CwmConfig  # noqa: E402
from model.modeling import CwmForCausalLM, rope_inverse_frequencies  # noqa: E402
from model.quantize import FUSED_KERNEL, quantize_int8  # noqa: E402

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


@torch.no_grad()
def measure(model: CwmForCausalLM, device: str, context: int, new: int,
            compiled: bool = False) -> tuple[float, float, float]:
    """Prefill tokens/s, batch-1 decode tokens/s, and the host's time to issue one decode
    step (from an idle GPU): near the step's whole time, the step is bound by the CPU."""
    dtype = model.dtype
    warm = KVCache(model.config, 1, 64, dtype, device)  # first calls (cuBLAS, kernels) untimed
    model(torch.zeros(1, 32, dtype=torch.long, device=device), cache=warm, logits_to_keep=1)
    model(torch.zeros(1, 1, dtype=torch.long, device=device), cache=warm, logits_to_keep=1)
    del warm
    prompt = torch.randint(0, model.config.vocab_size, (1, context), device=device)
    cache = KVCache(model.config, 1, context + new + 3, dtype, device)
    sync(device)
    start = time.perf_counter()
    logits = model(prompt, cache=cache, logits_to_keep=1).logits
    sync(device)
    prefill = context / (time.perf_counter() - start)
    token = logits[:, -1].argmax(-1, keepdim=True)

    def step(token: torch.Tensor) -> torch.Tensor:
        if compiled:
            position = torch.full((1, 1), cache.length, device=device)
            return decode_step(model, cache, token, position).argmax(-1, keepdim=True)
        return model(token, cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)

    step(token)  # first step (new shapes; compiling) untimed
    sync(device)
    start = time.perf_counter()
    for _ in range(new):
        token = step(token)
    sync(device)
    decode = new / (time.perf_counter() - start)
    start = time.perf_counter()
    step(token)
    issue = time.perf_counter() - start
    sync(device)
    return prefill, decode, issue


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--bandwidth-tbs", type=float)
    parser.add_argument("--compile", action="store_true",
                        help="decode through the compiled step (model/compiled_decode.py)")
    args = parser.parse_args(argv)
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
          f"context {args.context}")
    report("bf16" if dtype == torch.bfloat16 else str(dtype).removeprefix("torch."),
           model, device, args, tbs)
    quantize_int8(model)  # linear layer by linear layer: the bf16 weights go as it goes
    if device == "cuda":
        torch.cuda.empty_cache()
    report("int8 weight-only", model, device, args, tbs)
    kernel = "aten's fused int8 kernel" if FUSED_KERNEL.get(device) else "a dequantized copy"
    print(f"int8 products ran through {kernel}")


def report(label: str, model: CwmForCausalLM, device: str, args, tbs: float | None) -> None:
    config = model.config
    weight_bytes = sum(t.numel() * t.element_size()
                       for t in [*model.parameters(), *model.buffers()] if t.dim() >= 1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prefill, decode, issue = measure(model, device, args.context, args.new, args.compile)
    label += ", compiled decode step" if args.compile else ""
    line = (f"{label}: {weight_bytes / 1e9:.1f} GB of weights; prefill {prefill:,.0f} tok/s; "
            f"batch-1 decode {decode:,.1f} tok/s ({1e3 / decode:.1f} ms/token; the host "
            f"issues a step in {issue * 1e3:.1f} ms)")
    if device == "cuda":
        line += f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    if tbs:
        per_position = 2 * config.num_key_value_heads * config.head_dim * 2  # K and V, bf16
        kv_bytes = sum(per_position * (args.context if t == "full_attention"
                                       else min(args.context, config.sliding_window))
                       for t in config.layer_types)
        limit = tbs * 1e12 / (weight_bytes + kv_bytes)
        line += f"; bandwidth limit {limit:.1f} tok/s at {tbs} TB/s: {decode / limit:.0%} of it"
    print(line)

if __name__ == "__main__":
    main()
