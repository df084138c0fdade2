"""The CWM architecture in plain PyTorch: Llama 3 with per-layer sliding-window attention.

Operation order follows spec/model.md (and transformers' CwmForCausalLM with eager attention)
so that logits match it: RMSNorm in fp32 then cast, RoPE cos/sin in fp32 cast to the model
dtype, scores * head_dim**-0.5 plus an additive mask, softmax in fp32. `attention="sdpa"` uses
`torch.nn.functional.scaled_dot_product_attention` instead (faster, not bit-identical).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import CwmConfig


CAUSAL = "causal"  # stands for a plain causal mask, which SDPA applies itself


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
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


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


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


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

    def forward(self, x, cos, sin, mask, cache=None, attention: str = "eager"):
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        if attention == "sdpa":  # grouped-query attention without copying keys/values
            causal = mask is CAUSAL
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask,
                                                 is_causal=causal, enable_gqa=True,
                                                 scale=self.head_dim ** -0.5)
        else:  # the exact operation order of transformers' eager attention
            groups = self.n_heads // self.n_kv
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
            scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim ** -0.5
            if mask is not None:
                scores = scores + mask
            weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(weights, v)
        out = out.transpose(1, 2).reshape(batch, length, -1)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, config: CwmConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: CwmConfig, layer: int):
        super().__init__()
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache=None, attention="eager"):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, attention)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, config: CwmConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CwmForCausalLM(nn.Module):
    """Weight names match Hugging Face checkpoints (`model.layers.{i}.self_attn.q_proj.weight`, ...)."""

    def __init__(self, config: CwmConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)
        self.attention = "eager"  # or "sdpa"

    def forward(self, input_ids: torch.Tensor | None = None, *,
                inputs_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None,
                labels: torch.Tensor | None = None, logits_to_keep: int = 0) -> CausalLMOutput:
        """`attention_mask` (batch, past + new) marks real tokens (1) and padding (0);
        `cache` carries keys/values across calls; `labels` (-100 = ignored) gives the loss;
        `logits_to_keep` > 0 computes logits for the last that many positions only."""
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length, _ = x.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=x.device).expand(batch, -1)
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        if cache is not None:
            cache.prepare(length)
        # A prefill without padding whose window covers it is plain causal attention, which
        # SDPA's causal kernel does without a mask.
        plain = (self.attention == "sdpa" and past == 0 and length > 1
                 and (attention_mask is None or bool(attention_mask.all())))
        masks = {window: CAUSAL if plain and (window is None or length <= window)
                 else self._mask(window, attention_mask, cache, past, length, x)
                 for window in {layer.self_attn.window for layer in self.model.layers}}
        for layer in self.model.layers:
            x = layer(x, cos, sin, masks[layer.self_attn.window], cache, self.attention)
        if cache is not None:
            cache.advance(length)
        x = self.model.norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(logits, loss)

    def _mask(self, window, attention_mask, cache, past, length, x) -> torch.Tensor | None:
        """Additive mask (batch or 1, 1, queries, keys): causal by sequence index (as
        transformers does, whatever the position ids), the sliding window, and padding.
        None when a one-token step may see every key it is given (the common decode step)."""
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
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=device)
        bias.masked_fill_(~allowed, torch.finfo(x.dtype).min)
        return bias[:, None]
