"""A training run's settings and their defaults, the one place for each: the loop's
(`TrainConfig`), the run's (`TrainOptions`) and the shape presets (`SIZES`). No torch here:
`tracekit train --help` reads its defaults from these objects without loading it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 2000
    batch_rows: int = 8  # rows per optimizer step, over all ranks and accumulation
    accumulation: int = 1  # micro-batches per step (on each rank)
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 500  # steps between validations (0: only at the end)
    save_every: int = 100  # steps between saved states (each is one atomic file)
    autocast: str | None = None  # "bfloat16" to train under autocast; None: the weights' dtype
    optimizer: str = "adamw"  # "muon": Muon on attention and MLP matrices, AdamW on the rest


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    datasets: tuple[str, ...]
    size: str = "small"
    shape: tuple[tuple[str, int], ...] = ()  # overrides of the preset
    seq_len: int = 1024
    vocab_size: int = 2048
    val_traces: int = 100
    loss_on_context: bool = False
    max_frame_tokens: int | None = None  # leave out traces with a longer frame (None: keep all)
    device: str = "cpu"
    init: str | None = None  # a checkpoint to start from: its weights, shape and tokenizer


# Shapes by --size. tiny: for tests (seconds on a CPU). small: the bundled model, sized for a
# 2-core CPU in about two hours (~3.7M parameters at a 2k vocabulary). base: a GPU in minutes.
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=64),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64, sliding_window=256),
    "base": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=10,
                 num_attention_heads=6, num_key_value_heads=2, head_dim=64, sliding_window=512),
}
