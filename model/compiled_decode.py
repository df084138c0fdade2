"""One decode step as a fixed graph (gpt-fast's recipe): compiled, and on CUDA replayed as a
CUDA graph.

`model.forward` takes the cache's length as a Python int and slices the cache to it, so every
step has new shapes and torch.compile would trace each one anew. Here the new token's sequence
index is a tensor: its keys/values are written with `index_copy_`, and attention reads the
whole preallocated cache under a mask built from tensors. One compiled graph then serves every
step of every cache of the same shapes (a second cache size makes that dimension dynamic).
The compiler fuses the ~40 small operator calls per layer that eager mode issues one by one.

Each cache gets its own `CacheStep`, whose inputs (token, position, index) live in fixed
tensors. On CUDA the step is recorded once as a CUDA graph (after two warm-up runs, which
compile) and every later step is one replay: the host no longer issues thousands of kernel
launches per token, the bound of batch-1 decode of large models on fast GPUs. The graph holds
the addresses of the cache's tensors and the model's weights: weights changed in place are read
as changed; weights replaced (model.to, quantize_int8, a new model) make a new step at the next
`decode_steps` call.

Same weights, same operations as the fast path (oneDNN for large fp32 weights on the CPU;
attention written out, see `attend`), so equal to it to rounding, not bit for bit. Used by
`generate` for batch-1 KVCache decode steps when `model.compile_decode` is set (batched steps
are bound by their matrix products, which the eager path does with blocked weights). The first
step compiles (how long, and what it gains: benchmarks/RESULTS.md, from benchmarks/runtime.py
--compile); the CUDA graph path is written for benchmarks/gpu_runtime.py and has not yet run
on a GPU.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .modeling import (
    ONEDNN_LINEAR,
    ONEDNN_MIN_WEIGHT,
    CwmForCausalLM,
    apply_rope,
    onednn_runs,
    rope_tables,
)

_COMPILED: dict[str, object] = {}  # device type -> the compiled step
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # KVCache -> its CacheStep


@torch.library.custom_op("tracekit::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's matmul as one opaque call in the compiled graph (the compiler would otherwise
    lower a linear layer to the default BLAS call, which reads large weights more slowly)."""
    return ONEDNN_LINEAR(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """modeling.linear's choice for one row, in a form the compiler traces."""
    if type(layer) is not nn.Linear:  # e.g. Int8Linear
        return layer(x)
    if onednn_runs(x, layer.weight) and layer.weight.numel() >= ONEDNN_MIN_WEIGHT:
        return onednn_linear(x, layer.weight, layer.bias)
    return F.linear(x, layer.weight, layer.bias)


def decode_steps(model: CwmForCausalLM, cache: KVCache,
                 compiled: bool = True) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The function that runs this cache's decode steps with `model`: given `token` and
    `position` ((1, 1) each), it advances the cache by one and returns the logits (1, vocab).
    Every cached position must be a real token (no padding). `compiled=False` runs the same
    step uncompiled (still a CUDA graph on CUDA). Call it once per generation, not per step:
    it checks the model's weight addresses (a few ms for the 32B model)."""
    stamp = (id(model), compiled, tuple(p.data_ptr() for p in model.parameters()))
    step = _STEPS.get(cache)
    if step is None or step.stamp != stamp:
        step = _STEPS[cache] = CacheStep(stamp)
    return lambda token, position: step(model, cache, token, position)


class CacheStep:
    """One cache's decode step with its inputs in fixed tensors; on CUDA, a CUDA graph. It
    keeps no reference to the cache or the model (it is kept per cache, dropped with it)."""

    def __init__(self, stamp: tuple):
        self.stamp = stamp
        self.inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the graph's output, rewritten by each replay

    def __call__(self, model: CwmForCausalLM, cache: KVCache, token: torch.Tensor,
                 position: torch.Tensor) -> torch.Tensor:
        cache.prepare(1)
        if self.inputs is None:
            index = torch.tensor([cache.length], device=token.device)
            self.inputs = (token.clone(), position.clone(), index)
        else:
            self.inputs[0].copy_(token)
            self.inputs[1].copy_(position)
            self.inputs[2].fill_(cache.length)
        if self.graph is None and token.is_cuda:
            self._record(self._run(model, cache))
        if self.graph is not None:
            self.graph.replay()
            logits = self.logits.clone()
        else:
            logits = self._run(model, cache)()
        cache.advance(1)
        return logits

    def _run(self, model: CwmForCausalLM, cache: KVCache) -> Callable[[], torch.Tensor]:
        kind = self.inputs[0].device.type
        function = _step
        if self.stamp[1]:
            if kind not in _COMPILED:
                _COMPILED[kind] = torch.compile(_step, fullgraph=True)
            function = _COMPILED[kind]

        def run() -> torch.Tensor:
            with warnings.catch_warnings():  # compiling warns of torch's own deprecated internals
                warnings.simplefilter("ignore", DeprecationWarning)
                return function(model, cache, *self.inputs)
        return run

    def _record(self, run: Callable[[], torch.Tensor]) -> None:
        """Warm up (compiling, cuBLAS handles) on a side stream, then record one step. The
        warm-up runs write this step's keys/values, which its replay writes again."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = run()
        self.graph = graph


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor,
           scale: float) -> torch.Tensor:
    """One query per row (q: batch, heads, 1, dim) against every slot of the cache where
    `allowed`, grouped-query without copying keys/values (with a mask and GQA, SDPA is
    reported to fall back to its math kernel on CUDA, which repeats them per query head; not
    checked here). Eager attention's operation order: scores * scale, masked, softmax in fp32."""
    batch, heads, _, dim = q.shape
    kv = keys.shape[1]
    scores = torch.matmul(q.view(batch, kv, heads // kv, dim), keys.transpose(2, 3)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, values).view(batch, heads, 1, dim)


def _step(model: CwmForCausalLM, cache: KVCache, token: torch.Tensor, position: torch.Tensor,
          index: torch.Tensor) -> torch.Tensor:
    x = model.model.embed_tokens(token)
    cos, sin = rope_tables(position, model.inv_freq, x.dtype)
    # Which keys the row may see: full layers hold sequence index i in slot i; sliding layers
    # hold a ring whose slot s holds sequence index ring[s] (-1: empty), this step's included.
    full = torch.arange(cache.max_length, device=x.device) <= index
    ring = cache.ring_index
    slot = index % ring.numel()
    held = torch.where(torch.arange(ring.numel(), device=x.device) == slot, index, ring)
    windowed = (held >= 0) & (held > index - (cache.window or 0))
    full, windowed = full[None, None, None], windowed[None, None, None]
    for layer in model.model.layers:
        attention = layer.self_attn
        batch, heads, kv, dim = x.shape[0], attention.n_heads, attention.n_kv, attention.head_dim
        ringed = cache.sliding[attention.layer] and not cache.windows_reach_all
        h = layer.input_layernorm(x)
        q = linear(h, attention.q_proj).view(batch, 1, heads, dim).transpose(1, 2)
        k = linear(h, attention.k_proj).view(batch, 1, kv, dim).transpose(1, 2)
        v = linear(h, attention.v_proj).view(batch, 1, kv, dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = cache.keys[attention.layer], cache.values[attention.layer]
        keys.index_copy_(2, slot if ringed else index, k)
        values.index_copy_(2, slot if ringed else index, v)
        out = attend(q, keys, values, windowed if ringed else full, dim ** -0.5)
        x = x + linear(out.transpose(1, 2).reshape(batch, 1, -1), attention.o_proj)
        h = layer.post_attention_layernorm(x)
        mlp = layer.mlp
        x = x + linear(F.silu(linear(h, mlp.gate_proj)) * linear(h, mlp.up_proj),
                       mlp.down_proj)
    return linear(model.model.norm(x), model.lm_head)[:, -1]
