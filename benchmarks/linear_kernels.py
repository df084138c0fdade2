"""Which matmul reads CPU weights faster: F.linear (MKL) or oneDNN's `_linear_pointwise`,
for the shapes of benchmarks/runtime.py's model at 1, 4 and 16 rows. Each weight is one of 16
copies taken in turn, so it comes from memory, not cache, as in a decode step. The last column
is oneDNN with the weight reordered once into its blocked layout for 16 rows
(`torch.ops.mkldnn._reorder_linear_weight`), what the fast path keeps for products of more
than one row. This is what sets `tracekit.model.modeling.ONEDNN_MIN_WEIGHT` and `ONEDNN_PACK_MIN_WEIGHT`.

    python benchmarks/linear_kernels.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = [(128, 512), (512, 512), (1408, 512), (512, 1408), (32000, 512)]


def per_call(fn, calls: int, repeats: int = 30) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / calls


def main() -> None:
    onednn = torch.ops.mkldnn._linear_pointwise
    print(f"{'rows':>4s} {'weight':>12s} {'MiB':>6s} {'F.linear us':>12s} {'oneDNN us':>10s}"
          f" {'speed-up':>8s} {'blocked us':>10s} {'speed-up':>8s}")
    for rows in (1, 4, 16, 64):
        for out_features, in_features in SHAPES:
            weights = [torch.randn(out_features, in_features) for _ in range(16)]
            x = torch.randn(rows, in_features)
            mkl = per_call(lambda: [F.linear(x, w) for w in weights], 16)
            dnn = per_call(lambda: [onednn(x, w, None, "none", [], "") for w in weights], 16)
            blocked = [torch.ops.mkldnn._reorder_linear_weight(w, 16) for w in weights]
            reordered = per_call(lambda: [onednn(x, w, None, "none", [], "") for w in blocked], 16)
            mib = out_features * in_features * 4 / 2**20
            print(f"{rows:4d} {f'{out_features}x{in_features}':>12s} {mib:6.2f} {mkl * 1e6:12.0f}"
                  f" {dnn * 1e6:10.0f} {mkl / dnn:7.2f}x {reordered * 1e6:10.0f}"
                  f" {mkl / reordered:7.2f}x")


if __name__ == "__main__":
    main()
