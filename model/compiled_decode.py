"""One decode step as a fixed graph for torch.compile (gpt-fast's recipe).

`model.forward` takes the cache's length as a Python int and slices the cache to it, so every
step has new shapes and torch.compile would trace each one anew. Here the new token's sequence
index is a tensor: its keys/values are written with `index_copy_`, and attention reads the
whole preallocated cache under a mask built from tensors. One compiled graph then serves every
step of every cache of the same shapes (a second cache size makes that dimension dynamic).
The compiler fuses the ~40 small operator calls per layer that eager mode issues one by one.

Same weights, same operations as the fast path (SDPA attention; oneDNN for large fp32
weights on the CPU), so equal to it to rounding, not bit for bit; weights changed after
compiling are read as they are (nothing is frozen). Used by `generate` for batch-1 KVCache
decode steps when `model.compile_decode` is set (batched steps are bound by their matrix
products, which the eager path does with blocked weights). The first step compiles: 20-30 s
on a 2-core CPU. Measured on the CPU only (benchmarks/runtime.py --compile); on CUDA the same
graph is compiled, without CUDA graphs, and has not been measured.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from model.cache import KVCache
from model.modeling import (ONEDNN_LINEAR, ONEDNN_MIN_WEIGHT, CwmForCausalLM, apply_rope,
                            onednn_runs, rope_tables)

_COMPILED: dict[str, object] = {}  # device type -> the compiled step


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


def decode_step(model: CwmForCausalLM, cache: KVCache, token: torch.Tensor,
                position: torch.Tensor) -> torch.Tensor:
    """Run one token per row (`token`, `position`: (batch, 1)) through the compiled step and
    advance the cache; return the logits (batch, vocab). Every cached position must be a real
    token (no padding)."""
    cache.prepare(1)
    index = torch.tensor([cache.length], device=token.device)
    kind = token.device.type
    if kind not in _COMPILED:
        _COMPILED[kind] = torch.compile(_step, fullgraph=True)
    with warnings.catch_warnings():  # compiling warns of torch's own deprecated internals
        warnings.simplefilter("ignore", DeprecationWarning)
        logits = _COMPILED[kind](model, cache, token, position, index)
    cache.advance(1)
    return logits


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
        out = F.scaled_dot_product_attention(q, keys, values,
                                             attn_mask=windowed if ringed else full,
                                             enable_gqa=True, scale=dim ** -0.5)
        x = x + linear(out.transpose(1, 2).reshape(batch, 1, -1), attention.o_proj)
        h = layer.post_attention_layernorm(x)
        mlp = layer.mlp
        x = x + linear(F.silu(linear(h, mlp.gate_proj)) * linear(h, mlp.up_proj),
                       mlp.down_proj)
    return linear(model.model.norm(x), model.lm_head)[:, -1]
