"""Weight-only int8 quantization of the linear layers, per output channel: weights take a
quarter of their fp32 size (half of bf16), which is what fits the 32B model on one 80 GB GPU
with room for long contexts. Activations stay in the model's dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FUSED_KERNEL: dict[str, bool] = {}  # device type -> whether aten's int8 matmul runs there
# Where aten's int8 kernel is used. On CUDA it is slower than a dequantized copy and cuBLAS
# even for one row (H200, a 21504x6144 weight: 1.30 against 0.45 ms; 128 rows: 37.8 against
# 0.44 ms), so there the weight is dequantized: int8 saves memory there, not time.
FUSED_DEVICES = ("cpu", "mps")


class Int8Linear(nn.Module):
    """y = (x @ W_int8^T) * scale, with scale = max |W[row]| / 127 per output row."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        scale = (weight.float().abs().amax(dim=1) / 127).clamp(min=1e-12)
        self.register_buffer("weight", torch.round(weight.float() / scale[:, None])
                             .clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(weight.dtype))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        if (kind in FUSED_DEVICES and x.dtype in (torch.float32, torch.bfloat16)
                and FUSED_KERNEL.get(kind, True)):
            flat = x.reshape(-1, x.shape[-1])  # fused int8 kernel: no dequantized copy
            try:
                out = torch.ops.aten._weight_int8pack_mm(flat, self.weight,
                                                         self.scale.to(x.dtype))
            except (RuntimeError, NotImplementedError):  # not built for this device
                FUSED_KERNEL[kind] = False
            else:
                FUSED_KERNEL[kind] = True
                return out.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of the model (in place) by its int8 weight-only version."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, Int8Linear(child))
        else:
            quantize_int8(child)
    return model
