"""The KV cache: preallocated per layer. Full-attention layers keep every position; sliding
layers keep only the last `sliding_window` positions in a ring buffer, so memory stays bounded
on long traces. Keys are stored after RoPE.

Four views of it, each passed to the model's forward as `cache`: `KVCache` itself (prefill,
decode, rewind), `PrefixForks` (branches over one stored prefix), `StaticStep` (one token
at a sequence index held in a tensor, for compiled steps and CUDA graphs) and `RowCache`
(rows that each continue a prefix of their own, at their own length: continuous batching).
Each stores this forward's keys/values and says which keys each query may see; the attention
itself is computed in model/modeling.py."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import CwmConfig


class KVCache:
    """`rewind_margin`: how many positions the cache can be rewound by exactly; sliding layers
    keep that many positions beyond the window (masked out of attention until needed)."""

    def __init__(self, config: CwmConfig, batch: int, max_length: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu", rewind_margin: int = 0):
        self.max_length = max_length
        self.rewind_margin = rewind_margin
        self.length = 0  # positions seen so far (the next token's index)
        self.window = config.sliding_window
        # Sliding windows at least as long as the cache reach every position it can hold:
        # its sliding layers are then stored and read as full layers (no ring, no mask).
        self.windows_reach_all = self.window is None or max_length <= self.window
        shape = (batch, config.num_key_value_heads)
        self.keys, self.values = [], []
        self.sliding = [t == "sliding_attention" for t in config.layer_types]
        ring = min((self.window or max_length) + rewind_margin, max_length)
        # A ring as long as the cache never wraps (slot i holds position i): its layers are
        # read like full ones, up to the last position, with the window as a mask.
        self.slots_are_positions = ring >= max_length
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
        if not sliding or self.slots_are_positions:
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

    def store(self, layer: int, k: torch.Tensor,
              v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this forward's keys/values (batch, kv_heads, new, dim); return every key/value
        the layer's queries attend to (batch, kv_heads, keys, dim), laid out as `key_indices`."""
        start, new = self.length, k.shape[2]
        if not self.sliding[layer] or self.slots_are_positions:  # slot i holds position i
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
        if any(self.sliding) and length > 0 and oldest_needed < oldest_held:
            raise ValueError(f"cannot rewind by {self.length - length} positions: sliding layers "
                             f"keep {self.rewind_margin} beyond the window (make the KVCache "
                             "with a larger rewind_margin)")
        self.ring_index[self.ring_index >= length] = -1
        self.length = length

    def fork(self, branches: int | Sequence[int], max_new: int) -> PrefixForks:
        """Continuations of this one-row cache's prefix that store the prefix once: `branches`
        rows from the whole prefix, or one row per prefix length given (see PrefixForks)."""
        lengths = [self.length] * branches if isinstance(branches, int) else list(branches)
        return PrefixForks(self, lengths, max_new)

    def next_positions(self, new: int, batch: int) -> torch.Tensor:
        """Position ids of the next `new` tokens of each row."""
        return torch.arange(self.length, self.length + new,
                            device=self.ring_index.device).expand(batch, -1)

    def positions_held(self, layer: int) -> int:
        """How many positions this layer's cache holds now."""
        if not self.sliding[layer]:
            return self.length
        return int((self.ring_index >= 0).sum())


class PrefixForks:
    """Several continuations of one cached prefix, with the prefix stored once.

    Branch b sees the prefix's first `lengths[b]` positions, then its own tokens (at most
    `max_new`, the same number in every branch). The prefix's keys/values stay in the one-row
    parent cache, which every branch reads and none copies: attention runs in two parts, over
    the shared prefix (all branches in one matrix product) and over each branch's own tokens,
    under one softmax. Each branch stores only its own tokens. Leave the parent alone while the
    forks are in use. Sliding layers need the positions each branch's window reaches back to:
    for branches shorter than the prefix, make the parent with a large enough `rewind_margin`.
    """

    def __init__(self, prefix: KVCache, lengths: Sequence[int], max_new: int):
        if prefix.keys[0].shape[0] != 1:
            raise ValueError("fork a one-row cache (the shared prefix)")
        if not lengths or not all(1 <= n <= prefix.length for n in lengths):
            raise ValueError(f"branch prefix lengths must be within 1..{prefix.length} (the "
                             "cached prefix)")
        ring = prefix.ring_index.numel()
        oldest_held = max(0, prefix.length - ring)
        if any(prefix.sliding) and max(0, min(lengths) - (prefix.window or 1) + 1) < oldest_held:
            raise ValueError(f"a branch of {min(lengths)} positions reaches back before the "
                             f"sliding layers' oldest kept position ({oldest_held}): make the "
                             "prefix KVCache with rewind_margin >= its length")
        self.prefix = prefix
        self.window = prefix.window
        self.sliding = prefix.sliding
        device = prefix.ring_index.device
        self.lengths = torch.tensor(lengths, device=device)
        self.max_length = max_new
        self.length = 0  # own tokens so far, in every branch
        batch, (_, heads, _, dim) = len(lengths), prefix.keys[0].shape
        dtype = prefix.keys[0].dtype
        self.keys = [torch.zeros(batch, heads, max_new, dim, dtype=dtype, device=device)
                     for _ in prefix.keys]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self._biases: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare(self, new: int) -> None:
        """Check room for `new` tokens; build the additive masks this forward uses."""
        if self.length + new > self.max_length:
            raise ValueError(f"the forks hold {self.max_length} new positions; "
                             f"{self.length} + {new} do not fit: fork with a larger max_new")
        device, dtype = self.lengths.device, self.keys[0].dtype
        step = self.length + torch.arange(new, device=device)  # own index of each query
        queries = self.lengths[:, None] + step  # (batch, new) sequence positions
        own = torch.arange(self.length + new, device=device)
        self._biases = {}
        for sliding in set(self.sliding):
            if sliding:
                shared = self.prefix.ring_index
            else:
                shared = torch.arange(self.prefix.length, device=device)
            allowed = (shared >= 0) & (shared < self.lengths[:, None, None])  # (b, 1, keys)
            own_allowed = own[None, :] <= step[:, None]  # (new, own keys)
            if sliding:
                allowed = allowed & (shared > queries[..., None] - self.window)
                own_allowed = own_allowed & (own[None, :] > step[:, None] - self.window)
            self._biases[sliding] = (_bias(allowed, dtype), _bias(own_allowed, dtype))

    def next_positions(self, new: int, batch: int | None = None) -> torch.Tensor:
        """Position ids of the next `new` tokens of each branch."""
        return self.lengths[:, None] + self.length + torch.arange(new, device=self.lengths.device)

    def mask(self, window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The additive masks of this forward's two parts for layers of this window:
        (batch, 1, shared keys) over the prefix, (new, own keys) over the branch's tokens."""
        return self._biases[window is not None]

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store this forward's keys/values (batch, kv_heads, new, dim); return the shared
        prefix's (kv_heads, held, dim) and the branches' own (batch, kv_heads, own, dim)."""
        start, new = self.length, k.shape[2]
        self.keys[layer][:, :, start:start + new] = k
        self.values[layer][:, :, start:start + new] = v
        own = self.keys[layer][:, :, :start + new], self.values[layer][:, :, :start + new]
        shared_k, shared_v = self.prefix.keys[layer][0], self.prefix.values[layer][0]
        if not self.sliding[layer]:
            shared_k = shared_k[:, :self.prefix.length]
            shared_v = shared_v[:, :self.prefix.length]
        return (shared_k, shared_v), own

    def advance(self, new: int) -> None:
        self.length += new

    def rewind(self, length: int) -> None:
        """Forget every own position from `length` on (own tokens are all kept: exact)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot rewind to {length}: the forks hold 0..{self.length}")
        self.length = length


class StaticStep:
    """One token at sequence index `index` (a one-element tensor) through a KVCache, with no
    Python number that changes from step to step: its keys/values are written with
    `index_copy_` and attention reads every preallocated slot under a mask made of tensors.
    So one traced graph serves every step (torch.compile) and one recording replays them all
    (CUDA graphs): model/compiled_decode.py. The caller checks room and advances the KVCache
    (`prepare(1)` before, `advance(1)` after); every cached position must be a real token."""

    def __init__(self, cache: KVCache, index: torch.Tensor):
        self.cache, self.index = cache, index
        ring = cache.ring_index
        self.slot = index % ring.numel()  # the ring slot this step writes
        device = index.device
        # Which slots the token may see: full layers hold sequence index i in slot i; sliding
        # layers hold a ring whose slot s holds sequence index ring[s] (-1: empty), this
        # step's included. (1, 1, 1, slots): batch, kv_heads, groups, slots.
        full = torch.arange(cache.max_length, device=device) <= index
        held = torch.where(torch.arange(ring.numel(), device=device) == self.slot, index, ring)
        windowed = (held >= 0) & (held > index - (cache.window or 0))
        self._masks = {False: full[None, None, None], True: windowed[None, None, None]}

    def prepare(self, new: int) -> None:
        pass  # checked by the caller, outside the fixed graph

    def advance(self, new: int) -> None:
        pass

    def _ringed(self, layer: int) -> bool:
        return self.cache.sliding[layer] and not self.cache.windows_reach_all

    def mask(self, window: int | None) -> torch.Tensor:
        """Which slots the token may read (boolean), on layers of this window."""
        return self._masks[window is not None and not self.cache.windows_reach_all]

    def store(self, layer: int, k: torch.Tensor,
              v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this token's key/value (batch, kv_heads, 1, dim) into its slot; return the
        layer's whole preallocated keys/values (batch, kv_heads, slots, dim)."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        slot = self.slot if self._ringed(layer) else self.index
        keys.index_copy_(2, slot, k)
        values.index_copy_(2, slot, v)
        return keys, values


class RowCache:
    """Rows that each continue a prefix of their own, at their own length: continuous
    batching, where a row that finishes is loaded with the next prefix while the others go on.
    The rows in use are always the first `active` (`drop` moves the last one into a freed
    place), and a forward runs those only, the same number of tokens each, written from the
    row's own length (`take_back` forgets those a row does not keep);
    attention reads the slots under a per-row mask, each band of rows (`bands`: up to `BANDS`
    runs of consecutive rows) up to its own longest row, and `reorder` keeps the rows in bands
    by length (the longest in the first), so that a band's rows are about as long as each
    other (rows of mixed lengths read up to the longest otherwise: 2.7x the slots they hold,
    in rollouts of CRUXEval).
    Every slot holds its position (no ring: a sliding layer's window is a mask). `load` copies
    a prefix in from a one-row KVCache."""

    def __init__(self, config: CwmConfig, rows: int, max_length: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        self.max_length, self.window = max_length, config.sliding_window
        shape = (rows, config.num_key_value_heads, max_length, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in config.layer_types]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)  # positions held
        self.active = 0
        self._rows = torch.arange(rows, device=device)
        self._masks: dict[bool, torch.Tensor] = {}
        self._span = max_length
        self.bands: list[tuple[int, int, int]] = []  # (first row, end row, slots it reads)

    def load(self, row: int, prefix: KVCache, length: int) -> None:
        """Row `row` (one in use, or the next free one: `active`) continues the first `length`
        positions of `prefix`, a one-row KVCache whose slots are its positions (made with a
        rewind_margin of its whole length)."""
        if not prefix.slots_are_positions or length > prefix.length:
            raise ValueError("load from a KVCache that holds every position of the prefix")
        if length >= self.max_length:
            raise ValueError(f"a prefix of {length} positions leaves no room in a RowCache of "
                             f"{self.max_length}")
        if not 0 <= row <= self.active or row >= len(self.lengths):
            raise ValueError(f"load row {row}: rows in use are 0..{self.active - 1}")
        for mine, theirs in ((self.keys, prefix.keys), (self.values, prefix.values)):
            for layer, tensor in enumerate(mine):
                tensor[row, :, :length] = theirs[layer][0, :, :length]
        self.lengths[row] = length
        self.active = max(self.active, row + 1)

    def rewind_row(self, row: int, length: int) -> None:
        """Forget the positions of row `row` from `length` on."""
        if not 0 <= length <= int(self.lengths[row]):
            raise ValueError(f"cannot rewind row {row} to {length}: it holds "
                             f"0..{int(self.lengths[row])}")
        self.lengths[row] = length

    def drop(self, row: int) -> int | None:
        """Stop using `row`: the last row in use moves into its place. Returns the row that
        moved (its old index), or None when `row` was the last."""
        last = self.active - 1
        self.active = last
        if row == last:
            return None
        length = int(self.lengths[last])
        for tensors in (self.keys, self.values):
            for tensor in tensors:
                tensor[row, :, :length] = tensor[last, :, :length]
        self.lengths[row] = length
        return last

    def prepare(self, new: int) -> None:
        """Check room for this step's `new` tokens in every row in use; build their masks."""
        lengths = self.lengths[:self.active]
        longest = int(lengths.max())
        if longest + new > self.max_length:
            raise ValueError(f"a row of the RowCache is full ({self.max_length} positions)")
        self._span = longest + new  # the slots any row reads this step
        slots = torch.arange(self._span, device=lengths.device)
        # each query's own position: the row's length, plus its place among this step's tokens
        queries = lengths[:, None] + torch.arange(new, device=lengths.device)  # (rows, new)
        seen = slots <= queries[..., None]  # (rows, new, slots): causal, this token included
        windowed = seen & (slots > queries[..., None] - (self.window or 0))
        # (rows, 1, 1, new, slots): broadcast over kv_heads and query groups
        self._masks = {False: seen[:, None, None], True: windowed[:, None, None]}
        self.bands = _bands(lengths.tolist(), new)

    def reorder(self) -> list[int] | None:
        """When the bands would read more than `REORDER_AT` times what they read with the rows
        ranked by length (the longest in the first band), move into each band the rows of its
        ranks, only those that are in another band (about half the rows, over CRUXEval).
        Returns the order (row i now holds what row `order[i]` held), or None when the rows
        stay where they are."""
        lengths = self.lengths[:self.active].tolist()
        ranked = sorted(range(len(lengths)), key=lambda row: -lengths[row])
        if _read(lengths) <= REORDER_AT * _read([lengths[row] for row in ranked]):
            return None
        cuts = _cuts(len(lengths))
        band = {row: b for b, (first, end) in enumerate(zip(cuts, cuts[1:]))
                for row in ranked[first:end]}  # each row's band by its rank
        order = list(range(len(lengths)))
        leaving = [[row for row in range(first, end) if band[row] != b]
                   for b, (first, end) in enumerate(zip(cuts, cuts[1:]))]
        for b, places in enumerate(leaving):  # as many rows come into a band as leave it
            coming = [row for rows in leaving for row in rows if band[row] == b]
            for place, row in zip(places, coming, strict=True):
                order[place] = row
        moved = [place for place, row in enumerate(order) if place != row]
        into = torch.tensor(moved, device=self.lengths.device)
        out_of = torch.tensor([order[place] for place in moved], device=self.lengths.device)
        held = max(lengths[order[place]] for place in moved)
        for tensors in (self.keys, self.values):
            for tensor in tensors:
                tensor[into, :, :held] = tensor[out_of, :, :held]
        self.lengths[into] = self.lengths[out_of]
        return order

    def next_positions(self, new: int, batch: int | None = None) -> torch.Tensor:
        return self.lengths[:self.active, None] + torch.arange(new, device=self.lengths.device)

    def mask(self, window: int | None) -> torch.Tensor:
        """Which slots each row's token may read, on layers of this window."""
        return self._masks[window is not None]

    def store(self, layer: int, k: torch.Tensor,
              v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each row's keys/values (rows in use, kv_heads, new, dim) from its own length
        on; return the layer's keys/values of those rows up to the longest (rows, kv_heads,
        slots read, dim)."""
        n, new = self.active, k.shape[2]
        slots = self.lengths[:n, None] + torch.arange(new, device=k.device)  # (rows, new)
        rows = self._rows[:n, None]
        self.keys[layer][rows, :, slots] = k.transpose(1, 2)  # indexed: (rows, new, kv, dim)
        self.values[layer][rows, :, slots] = v.transpose(1, 2)
        return self.keys[layer][:n, :, :self._span], self.values[layer][:n, :, :self._span]

    def advance(self, new: int) -> None:
        self.lengths[:self.active] += new

    def take_back(self, counts: torch.Tensor) -> None:
        """Forget the last `counts[i]` positions of row i, for each row in use (a step's
        guesses the model did not agree with)."""
        self.lengths[:self.active] -= counts


BANDS = 4  # bands of rows per RowCache step, each reading up to its own longest row
REORDER_AT = 1.25  # RowCache.reorder moves rows when the bands would read this much more


def _cuts(rows: int) -> list[int]:
    """Where the bands of `rows` rows start, and the end: up to BANDS runs of about equal
    size."""
    return sorted({rows * band // BANDS for band in range(BANDS)} | {rows})


def _bands(lengths: list[int], new: int) -> list[tuple[int, int, int]]:
    """Rows 0..len(lengths) in their bands, each with the slots it reads (its longest row's
    length and the step's `new` tokens)."""
    cuts = _cuts(len(lengths))
    return [(first, end, max(lengths[first:end]) + new) for first, end in zip(cuts, cuts[1:])]


def _read(lengths: list[int]) -> int:
    """The slots the bands of rows of these lengths read (over a step of one token)."""
    return sum((end - first) * span for first, end, span in _bands(lengths, 1))


def _bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)
