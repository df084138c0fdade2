"""The KV cache: preallocated per layer. Full-attention layers keep every position; sliding
layers keep only the last `sliding_window` positions in a ring buffer, so memory stays bounded
on long traces. Keys are stored after RoPE."""

from __future__ import annotations

import torch

from model.config import CwmConfig


class KVCache:
    """`rewind_margin`: how many positions the cache can be rewound by exactly; sliding layers
    keep that many positions beyond the window (masked out of attention until needed)."""

    def __init__(self, config: CwmConfig, batch: int, max_length: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu", rewind_margin: int = 0):
        self.max_length = max_length
        self.rewind_margin = rewind_margin
        self.length = 0  # positions seen so far (the next token's index)
        self.window = config.sliding_window
        shape = (batch, config.num_key_value_heads)
        self.keys, self.values = [], []
        self.sliding = [t == "sliding_attention" for t in config.layer_types]
        ring = min((self.window or max_length) + rewind_margin, max_length)
        for sliding in self.sliding:
            size = ring if sliding else max_length
            self.keys.append(torch.zeros(*shape, size, config.head_dim, dtype=dtype, device=device))
            self.values.append(torch.zeros(*shape, size, config.head_dim, dtype=dtype,
                                           device=device))
        # Sequence index held by each ring slot (-1: empty), shared by all sliding layers.
        self.ring_index = torch.full((ring,), -1, dtype=torch.long, device=device)
        self._new = 0

    def prepare(self, new: int) -> None:
        if self.length + new > self.max_length:
            raise ValueError(f"the cache holds {self.max_length} positions; "
                             f"{self.length} + {new} do not fit: make a larger KVCache")
        self._new = new

    @property
    def in_place_decode(self) -> bool:
        """One new token and a ring exactly one window long: the token overwrites the oldest
        slot and attention reads the ring alone (no concatenation)."""
        return self._new == 1 and self.ring_index.numel() == self.window

    def ring_full(self) -> bool:
        """Every ring slot holds a position (counting the one this step writes)."""
        return bool((self.key_indices(True) >= 0).all())

    def key_indices(self, sliding: bool) -> torch.Tensor:
        """Sequence index of each key the next forward attends to (-1: an empty slot)."""
        start, end = self.length, self.length + self._new
        new = torch.arange(start, end, device=self.ring_index.device)
        if not sliding:
            return torch.arange(end, device=new.device)
        if self.in_place_decode:
            indices = self.ring_index.clone()
            indices[start % indices.numel()] = start
            return indices
        return torch.cat((self.ring_index, new))

    def padding_of(self, keep: torch.Tensor, sliding: bool) -> torch.Tensor:
        """The padding mask (batch, sequence) of real tokens, laid out like `key_indices`."""
        end = self.length + self._new
        if not sliding:
            return keep[:, :end]
        indices = self.key_indices(True)
        return keep[:, indices.clamp(min=0)] & (indices >= 0)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store this forward's keys/values; return what the layer attends to."""
        start, new = self.length, k.shape[2]
        if not self.sliding[layer]:
            self.keys[layer][:, :, start:start + new] = k
            self.values[layer][:, :, start:start + new] = v
            return self.keys[layer][:, :, :start + new], self.values[layer][:, :, :start + new]
        ring = self.ring_index.numel()
        if self.in_place_decode:
            slot = start % ring
            self.keys[layer][:, :, slot:slot + 1] = k
            self.values[layer][:, :, slot:slot + 1] = v
            return self.keys[layer], self.values[layer]
        keys = torch.cat((self.keys[layer], k), dim=2)
        values = torch.cat((self.values[layer], v), dim=2)
        keep = min(new, ring)  # only the last `ring` new positions can still be needed
        slots = torch.arange(start + new - keep, start + new, device=k.device) % ring
        self.keys[layer][:, :, slots] = k[:, :, new - keep:]
        self.values[layer][:, :, slots] = v[:, :, new - keep:]
        return keys, values

    def advance(self, new: int) -> None:
        ring = self.ring_index.numel()
        keep = min(new, ring)
        indices = torch.arange(self.length + new - keep, self.length + new,
                               device=self.ring_index.device)
        self.ring_index[indices % ring] = indices
        self.length += new
        self._new = 0

    def rewind(self, length: int) -> None:
        """Forget every position from `length` on (to step back, or to re-sample)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot rewind to {length}: the cache holds 0..{self.length}")
        oldest_held = max(0, self.length - self.ring_index.numel())
        oldest_needed = max(0, length - (self.window or 1) + 1)
        if any(self.sliding) and oldest_needed < oldest_held:
            raise ValueError(f"cannot rewind by {self.length - length} positions: sliding layers "
                             f"keep {self.rewind_margin} beyond the window (make the KVCache "
                             "with a larger rewind_margin)")
        self.ring_index[self.ring_index >= length] = -1
        self.length = length

    def fork(self, branches: int) -> KVCache:
        """A cache of `branches` rows, each starting from this one-row cache's prefix: one
        batched copy per layer, after which the branches run together and diverge freely.
        (Each branch holds its own copy of the prefix: storage is not shared.)"""
        if self.keys[0].shape[0] != 1:
            raise ValueError("fork a one-row cache (the shared prefix)")
        forked = object.__new__(KVCache)
        forked.__dict__.update(self.__dict__)
        forked.keys = [k.expand(branches, -1, -1, -1).clone() for k in self.keys]
        forked.values = [v.expand(branches, -1, -1, -1).clone() for v in self.values]
        forked.ring_index = self.ring_index.clone()
        return forked

    def positions_held(self, layer: int) -> int:
        """How many positions this layer's cache holds now."""
        if not self.sliding[layer]:
            return self.length
        return int((self.ring_index >= 0).sum())
