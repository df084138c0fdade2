"""The CWM architecture in plain PyTorch: Llama 3 with per-layer sliding-window attention.

Operation order follows docs/model.md (and transformers' CwmForCausalLM with eager attention)
so that logits match it: RMSNorm in fp32 then cast, RoPE cos/sin in fp32 cast to the model
dtype, scores * head_dim**-0.5 plus an additive mask, softmax in fp32. That is the exact path
(`model.fast = False`, the default, for parity tests). `model.fast = True` runs attention through
`torch.nn.functional.scaled_dot_product_attention` and, on the CPU, the linear layers through
oneDNN's matmul (what torch.compile uses there): faster, equal to rounding, not bit-identical.

This module is the one forward: every call of the model's projections and every attention
product is here. One `CwmForCausalLM.forward` serves training and teacher forcing (no cache),
prefill and decode through a `KVCache`, branches over a shared prefix (`PrefixForks`) and the
fixed one-token step that `torch.compile` and CUDA graphs replay (`StaticStep`, driven by
model/compiled_decode.py); the caches (model/cache.py) only store keys/values and say which
keys each query may see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .cache import KVCache, PrefixForks, RowCache, StaticStep
from .config import CwmConfig

CAUSAL = "causal"  # stands for a plain causal mask, which SDPA applies itself
# SDPA's kernels on CUDA, less cuDNN's: it builds a plan for each new key length, hundreds of
# milliseconds that a decode step (one more key each time) would pay every step.
CUDA_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
ONEDNN_LINEAR = (torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available()
                 and hasattr(torch.ops.mkldnn, "_linear_pointwise") else None)
ONEDNN_MIN_WEIGHT = 1 << 19  # elements (2 MiB in fp32): below, oneDNN's ~50 us per call loses
ONEDNN_PACK_MIN_WEIGHT = 1 << 18  # elements (1 MiB): from here a blocked copy pays at > 1 row
ONEDNN_PACK_ROWS = 16  # the row count oneDNN's blocked layout is chosen for (any count runs)


def linear(x: torch.Tensor, layer: nn.Module, fast: bool) -> torch.Tensor:
    """`layer(x)` without the module call. On the fast path, on the CPU, in fp32 and without
    autograd: one row (a decode step) goes through oneDNN for weights of 2 MiB and more, which
    reads them faster than the default BLAS call; more rows (prefill, batched decode) go
    through oneDNN with a copy of the weight reordered once into oneDNN's blocked layout, for
    weights from 1 MiB up (the figures: `benchmarks/linear_kernels.py`, benchmarks/RESULTS.md).
    That copy doubles those weights' memory; it is made at the first such call and again after
    the weight changes."""
    if type(layer) is not nn.Linear:  # e.g. Int8Linear
        return layer(x)
    weight = layer.weight
    if fast and onednn_runs(x, weight) and torch.compiler.is_compiling():
        if weight.numel() >= ONEDNN_MIN_WEIGHT:  # one opaque call in the compiled graph
            return onednn_linear(x, weight, layer.bias)
    elif fast and onednn_runs(x, weight):
        if (x.numel() > x.shape[-1] and weight.numel() >= ONEDNN_PACK_MIN_WEIGHT
                and not weight.is_inference()):  # (whose changes no version counter tells)
            return ONEDNN_LINEAR(x, _blocked_weight(layer), layer.bias, "none", [], "")
        if weight.numel() >= ONEDNN_MIN_WEIGHT:
            return ONEDNN_LINEAR(x, weight, layer.bias, "none", [], "")
    return F.linear(x, weight, layer.bias)


@torch.library.custom_op("tracekit::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's matmul as one opaque call for torch.compile (which would otherwise lower a
    linear layer to the default BLAS call, which reads large weights more slowly)."""
    return ONEDNN_LINEAR(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def onednn_runs(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN's matmul can take this product: on the CPU, in fp32, without autograd
    (it has no gradient). Which weights it pays for is `linear`'s choice."""
    return (x.is_cpu and x.dtype is torch.float32 and ONEDNN_LINEAR is not None
            and not (torch.is_grad_enabled() and weight.requires_grad))


def _blocked_weight(layer: nn.Linear) -> torch.Tensor:
    """The layer's weight in oneDNN's blocked layout, remade when the weight is replaced or
    changed in place (its version counter moves)."""
    weight = layer.weight
    stamp = (weight.data_ptr(), weight._version)
    kept = layer.__dict__.get("_onednn_blocked")
    if kept is None or kept[0] != stamp:
        kept = (stamp, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ONEDNN_PACK_ROWS))
        layer.__dict__["_onednn_blocked"] = kept
    return kept[1]


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one call, the same operations in the same order
            return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


def rope_inverse_frequencies(config: CwmConfig) -> torch.Tensor:
    """RoPE inverse frequencies, with the llama3 rescaling when the config asks for it."""
    rope = config.rope_parameters
    dim = config.head_dim
    inv = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rope.get("rope_type", "default") != "llama3":
        return inv
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv
    scaled = torch.where(wavelength > old / low, inv / factor, inv)
    smooth = (old / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelength < old / high) * ~(wavelength > old / low)
    return torch.where(medium, smoothed, scaled)


def rope_tables(position_ids: torch.Tensor, inv_freq: torch.Tensor,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin (for apply_rope) of each position, (batch, 1, length, head_dim):
    computed in fp32, then cast to the model dtype."""
    freqs = position_ids[..., None].float() * inv_freq.float()
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]
    half = sin.shape[-1] // 2
    return cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, where rotate_half(x) = (-x2, x1): the same products
    with the sign carried by `signed_sin` = (-sin1, sin2), and (x2, x1) one roll of x."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


ATTENTION_BLOCK = 256  # queries per SDPA call in `blocked_attention`


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      window: int | None, scale: float) -> torch.Tensor:
    """Masked attention of a whole sequence to itself (no cache: training, a prefill with
    documents or padding), ATTENTION_BLOCK queries at a time, each block given only the keys it
    can reach: none after its last query (causal) and, on a sliding layer, none before its
    first query's window. The keys left out are masked anyway, so this equals one SDPA call
    over everything up to rounding, with less work: at 1,024 tokens 62% of the scores on a full
    layer, 44% on a sliding layer of window 256 (SDPA's CPU kernel computes every score a mask
    hides)."""
    length = q.shape[2]
    blocks = []
    for start in range(0, length, ATTENTION_BLOCK):
        end = min(start + ATTENTION_BLOCK, length)
        first = max(0, start - window + 1) if window is not None else 0
        blocks.append(F.scaled_dot_product_attention(
            q[:, :, start:end], k[:, :, first:end], v[:, :, first:end],
            attn_mask=mask[..., start:end, first:end], enable_gqa=True, scale=scale))
    return torch.cat(blocks, dim=2)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """The exact operation order of transformers' eager attention: keys/values repeated per
    query head, scores * scale plus the additive mask, softmax in fp32. q (batch, heads,
    queries, dim); k, v (batch, kv_heads, keys, dim); out like q."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale  # (batch, heads, queries, keys)
    if mask is not None:
        scores = scores + mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: torch.Tensor | str | None, scale: float) -> torch.Tensor:
    """SDPA, grouped-query without copying keys/values; `mask` CAUSAL uses its causal kernel."""
    causal = mask is CAUSAL
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask,
                                          is_causal=causal, enable_gqa=True, scale=scale)


def grouped_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      allowed: torch.Tensor, scale: float) -> torch.Tensor:
    """A few queries per row (q: batch, heads, new, dim) against every slot of a cache (keys,
    values: batch, kv_heads, slots, dim) where `allowed` (broadcast to batch, kv_heads,
    groups, new, slots), grouped-query without copying keys/values: the static step's and the
    RowCache's attention, written out for torch.compile (with a mask and GQA, SDPA is
    reported to fall back to its math kernel on CUDA, which repeats them per query head; not
    checked here). Eager attention's order."""
    batch, heads, new, dim = q.shape
    kv = keys.shape[1]
    groups = heads // kv
    scores = torch.matmul(q.reshape(batch, kv, groups * new, dim), keys.transpose(2, 3)) * scale
    scores = scores.view(batch, kv, groups, new, -1).masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(weights.view(batch, kv, groups * new, -1), values)
    return out.view(batch, heads, new, dim)


def forked_attention(q: torch.Tensor, shared: tuple[torch.Tensor, torch.Tensor],
                     own: tuple[torch.Tensor, torch.Tensor],
                     biases: tuple[torch.Tensor, torch.Tensor], scale: float) -> torch.Tensor:
    """Attention of PrefixForks' branches, in two parts under one softmax: over the shared
    prefix (keys/values kv_heads, held, dim, read by every branch in one matrix product, never
    copied) and over each branch's own tokens (batch, kv_heads, own, dim). q (batch, heads,
    new, dim); `biases` the additive masks of the two parts, (batch, 1, held) and (new, own).
    Eager attention's operation order inside each part."""
    (shared_k, shared_v), (own_k, own_v) = shared, own
    batch, heads, new, dim = q.shape
    kv_heads, held = shared_k.shape[0], shared_k.shape[1]
    mine, groups = own_k.shape[2], heads // kv_heads
    q = q.reshape(batch, kv_heads, groups * new, dim)
    folded = q.transpose(0, 1).reshape(kv_heads, batch * groups * new, dim)
    shared_scores = torch.matmul(folded, shared_k.transpose(1, 2)) * scale
    shared_scores = shared_scores.view(kv_heads, batch, groups, new, held).transpose(0, 1)
    own_scores = torch.matmul(q, own_k.transpose(2, 3)) * scale
    own_scores = own_scores.view(batch, kv_heads, groups, new, mine)
    shared_bias, own_bias = biases
    scores = torch.cat((shared_scores + shared_bias[:, None, None], own_scores + own_bias), -1)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    shared_w, own_w = weights.split([held, mine], dim=-1)
    shared_w = shared_w.transpose(0, 1).reshape(kv_heads, batch * groups * new, held)
    out = torch.matmul(shared_w, shared_v).view(kv_heads, batch, groups, new, dim)
    out = out.transpose(0, 1) + torch.matmul(
        own_w.reshape(batch, kv_heads, groups * new, mine), own_v
    ).view(batch, kv_heads, groups, new, dim)
    return out.reshape(batch, heads, new, dim)


Cache = KVCache | PrefixForks | StaticStep | RowCache


class Attention(nn.Module):
    def __init__(self, config: CwmConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.window = (config.sliding_window
                       if config.layer_types[layer] == "sliding_attention" else None)
        width = self.n_heads * self.head_dim
        kv_width = self.n_kv * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, kv_width, bias=False)
        self.o_proj = nn.Linear(width, config.hidden_size, bias=False)
        self.fast = False  # set by CwmForCausalLM.fast

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask,
                cache: Cache | None = None) -> torch.Tensor:
        """x (batch, length, hidden) -> (batch, length, hidden). `mask`: what
        CwmForCausalLM._masks made for this layer's window and this cache."""
        batch, length, _ = x.shape
        q = self._heads(linear(x, self.q_proj, self.fast), self.n_heads)  # (b, heads, len, dim)
        k = self._heads(linear(x, self.k_proj, self.fast), self.n_kv)  # (b, kv, len, dim)
        v = self._heads(linear(x, self.v_proj, self.fast), self.n_kv)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        scale = self.head_dim ** -0.5
        if isinstance(cache, PrefixForks):  # the shared prefix read in place, not copied
            shared, own = cache.store(self.layer, k, v)
            out = forked_attention(q, shared, own, mask, scale)
        else:
            if cache is not None:  # k, v become every key this forward's queries may read
                k, v = cache.store(self.layer, k, v)
            if isinstance(cache, RowCache):  # a few tokens a row, each band to its longest
                out = torch.cat([grouped_attention(q[a:b], k[a:b, :, :span], v[a:b, :, :span],
                                                   mask[a:b, ..., :span], scale)
                                 for a, b, span in cache.bands])
            elif isinstance(cache, StaticStep):  # one token, every slot
                out = grouped_attention(q, k, v, mask, scale)
            elif not self.fast:
                out = eager_attention(q, k, v, mask, scale)
            elif cache is None and isinstance(mask, torch.Tensor) and length > ATTENTION_BLOCK:
                out = blocked_attention(q, k, v, mask, self.window, scale)
            else:
                out = sdpa_attention(q, k, v, mask, scale)
        out = out.transpose(1, 2).reshape(batch, length, -1)  # (batch, length, heads * dim)
        return linear(out, self.o_proj, self.fast)

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """(batch, length, heads * dim) -> (batch, heads, length, dim)"""
        return x.view(*x.shape[:2], heads, self.head_dim).transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, config: CwmConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.fast = False  # set by CwmForCausalLM.fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(linear(x, self.gate_proj, self.fast)) * linear(x, self.up_proj, self.fast)
        return linear(hidden, self.down_proj, self.fast)


class DecoderLayer(nn.Module):
    def __init__(self, config: CwmConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, rope, mask, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, config: CwmConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CwmForCausalLM(nn.Module):
    """Weight names match Hugging Face checkpoints (`model.layers.{i}.self_attn.q_proj.weight`,
    ...)."""

    def __init__(self, config: CwmConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)
        self.fast = False
        self.compile_decode = False  # True: generate compiles batch-1 decode steps

    @property
    def fast(self) -> bool:
        """False (the default): the exact path, transformers' eager operation order (parity).
        True: SDPA attention and oneDNN linear layers on the CPU. Set on the model, it holds for
        every forward of every layer."""
        return self.__dict__["_fast"]

    @fast.setter
    def fast(self, value: bool) -> None:
        self.__dict__["_fast"] = value
        for module in self.modules():
            if isinstance(module, (Attention, MLP)):
                module.fast = value

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (linear weights may be int8 after quantize_int8)."""
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def forward(self, input_ids: torch.Tensor | None = None, *,
                inputs_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Cache | None = None,
                labels: torch.Tensor | None = None, logits_to_keep: int = 0,
                document_ids: torch.Tensor | None = None) -> CausalLMOutput:
        """`input_ids` (batch, length), or `inputs_embeds` (batch, length, hidden);
        `attention_mask` (batch, past + new) marks real tokens (1) and padding (0);
        `cache` carries keys/values across calls (PrefixForks, StaticStep and RowCache take
        no attention_mask); `labels` (-100 = ignored) gives the loss;
        `logits_to_keep` > 0 computes logits for the last that many positions only;
        `document_ids` (batch, length; training, no cache) keeps attention inside each document
        of a packed row, whose positions should restart with each document.
        Logits (batch, length or logits_to_keep, vocab)."""
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length, _ = x.shape
        if position_ids is None:
            position_ids = (cache.next_positions(length, batch) if cache is not None
                            else torch.arange(length, device=x.device).expand(batch, -1))
        rope = rope_tables(position_ids, self.inv_freq, x.dtype)
        if cache is not None:
            cache.prepare(length)
        masks = self._masks(x, cache, attention_mask, document_ids)
        if self.fast and x.is_cuda and not isinstance(cache, StaticStep):
            with sdpa_kernel(CUDA_ATTENTION):
                x = self._layers(x, rope, masks, cache)
        else:
            x = self._layers(x, rope, masks, cache)
        if cache is not None:
            cache.advance(length)
        x = self.model.norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = linear(x, self.lm_head, self.fast)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(logits, loss)

    def _layers(self, x, rope, masks, cache) -> torch.Tensor:
        for layer in self.model.layers:
            x = layer(x, rope, masks[layer.self_attn.window], cache)
        return x

    def _masks(self, x, cache, attention_mask, document_ids) -> dict:
        """Each layer window's mask for this forward: CAUSAL, None (every key given may be
        read), an additive mask (batch or 1, 1, queries, keys), or what a PrefixForks, a
        StaticStep or a RowCache makes itself."""
        windows = {layer.self_attn.window for layer in self.model.layers}
        if isinstance(cache, (PrefixForks, StaticStep, RowCache)):
            if attention_mask is not None:
                raise ValueError(f"a {type(cache).__name__} has no padding: pass no "
                                 "attention_mask")
            return {window: cache.mask(window) for window in windows}
        batch, length, _ = x.shape
        past = cache.length if cache is not None else 0
        # A prefill without padding whose keys are exactly its own tokens (full layers; sliding
        # layers without a cache, when the window covers it: with a cache they also read the
        # ring) is plain causal attention, which SDPA's causal kernel does without a mask.
        plain = (self.fast and past == 0 and length > 1 and document_ids is None
                 and (attention_mask is None or bool(attention_mask.all())))
        reach = {w: None if cache is not None and cache.windows_reach_all else w
                 for w in windows}  # a window that reaches every cached position is none
        return {window: CAUSAL if plain and (reach[window] is None
                                             or (cache is None and length <= window))
                else _mask(reach[window], attention_mask, cache, past, length, x, document_ids)
                for window in windows}


def _mask(window: int | None, attention_mask: torch.Tensor | None, cache: KVCache | None,
          past: int, length: int, x: torch.Tensor,
          document_ids: torch.Tensor | None) -> torch.Tensor | None:
    """Additive mask (batch or 1, 1, queries, keys): causal by sequence index (as transformers
    does, whatever the position ids), the sliding window, padding, and the documents of a
    packed row. None when a one-token step may see every key it is given (the common decode
    step)."""
    device = x.device
    if (cache is not None and length == 1
            and (attention_mask is None or bool(attention_mask.all()))
            and (window is None or (cache.in_place_decode and cache.ring_full()))):
        return None
    queries = torch.arange(past, past + length, device=device)[:, None]
    if cache is not None:
        keys = cache.key_indices(window is not None)[None, :]
    else:
        keys = torch.arange(length, device=device)[None, :]
    allowed = (keys <= queries) & (keys >= 0)
    if window is not None:
        allowed = allowed & (keys > queries - window)
    allowed = allowed[None]
    if attention_mask is not None:
        keep = attention_mask.bool()
        keep = cache.padding_of(keep, window is not None) if cache is not None else keep
        allowed = allowed & keep[:, None, :]
    if document_ids is not None:
        allowed = allowed & (document_ids[:, :, None] == document_ids[:, None, :])
    bias = torch.zeros(allowed.shape, dtype=x.dtype, device=device)
    bias.masked_fill_(~allowed, torch.finfo(x.dtype).min)
    return bias[:, None]
