"""One decode step as a fixed graph (gpt-fast's recipe): compiled, and on CUDA replayed as a
CUDA graph.

Through a KVCache, `model.forward` takes the cache's length as a Python int and slices the
cache to it, so every step has new shapes and torch.compile would trace each one anew. Here the
same forward runs through a `StaticStep` view of the cache (model/cache.py): the new token's
sequence index is a tensor, its keys/values are written with `index_copy_`, and attention reads
the whole preallocated cache under a mask built from tensors. One compiled graph then serves
every step of every cache of the same shapes (a second cache size makes that dimension
dynamic). The compiler fuses the ~40 small operator calls per layer that eager mode issues one
by one.

Each cache gets its own `CacheStep`, whose inputs (token, position, index) live in fixed
tensors. On CUDA the step is recorded once as a CUDA graph (after two warm-up runs, which
compile) and every later step is one replay: the host no longer issues thousands of kernel
launches per token, the bound of batch-1 decode of large models on fast GPUs. The graph holds
the addresses of the cache's tensors and the model's weights: weights changed in place are read
as changed; weights replaced (model.to, quantize_int8, a new model) make a new step at the next
`decode_steps` call.

The model's own forward on its fast path (oneDNN for large fp32 weights on the CPU; attention
written out, modeling.grouped_attention), so equal to the eager steps to rounding, not bit for
bit. Used by
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

from .cache import KVCache, StaticStep
from .modeling import CwmForCausalLM

_COMPILED: dict[str, object] = {}  # device type -> the compiled step
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # KVCache -> its CacheStep


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


def _step(model: CwmForCausalLM, cache: KVCache, token: torch.Tensor, position: torch.Tensor,
          index: torch.Tensor) -> torch.Tensor:
    """The model's forward of one token (1, 1) at `position` (1, 1), sequence index `index`
    (1,): logits (1, vocab)."""
    return model(token, position_ids=position, cache=StaticStep(cache, index)).logits[:, -1]
