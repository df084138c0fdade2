"""Training a CWM-architecture model on packed token rows: the loop, over token ids only (it
imports nothing of tracekit but the model layer and the settings: a test checks).

The rows come from the caller (tracekit turns traces into them): `Rows.tokens` (n, length),
`Rows.documents` (which document each position belongs to; attention stays inside it) and
`Rows.targets` (the next-token labels, -100 where no loss is taken). The loop: AdamW (no decay
on norms and embeddings; or Muon on the hidden matrices), linear warmup then cosine to
`min_lr`, gradient clipping, gradient accumulation, bf16 autocast where asked, and a data
order that is a function of the seed and the step alone. Its whole state (weights, optimizer,
step, RNG) is one file written by rename, so a run killed at any moment and resumed ends with
exactly the weights of an uninterrupted run.
`torchrun` runs it under DistributedDataParallel: each rank takes its share of every batch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tracekit.model.config import CwmConfig
from tracekit.model.modeling import CwmForCausalLM
from tracekit.training.config import SIZES, TrainConfig

STATE = "training_state.pt"
LOG = "training_log.jsonl"


@dataclass
class Rows:
    """Packed training rows, each of `length` tokens."""

    tokens: np.ndarray  # int64 (n, length)
    documents: np.ndarray  # int32 (n, length): the document index within the row
    targets: np.ndarray  # int64 (n, length): next token, -100 where no loss is taken

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, index: np.ndarray, device) -> dict[str, torch.Tensor]:
        tokens = torch.from_numpy(self.tokens[index]).to(device)
        documents = torch.from_numpy(self.documents[index]).to(device)
        return {"input_ids": tokens, "document_ids": documents,
                "position_ids": _positions(documents),
                "targets": torch.from_numpy(self.targets[index]).to(device)}


def _positions(documents: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 where each document starts."""
    index = torch.arange(documents.shape[1], device=documents.device).expand_as(documents)
    starts = torch.ones_like(documents, dtype=torch.bool)
    starts[:, 1:] = documents[:, 1:] != documents[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - first


def init_weights(model: CwmForCausalLM, std: float = 0.02) -> None:
    """A new model's weights as Llama's recipe has them: every matrix and the embeddings drawn
    from N(0, std), norms at 1 (PyTorch's own layer defaults give a tied head huge logits)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, std)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup to `lr`, then a cosine down to `min_lr` at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def step_rows(config: TrainConfig, step: int, n: int) -> np.ndarray:
    """The row indices of one optimizer step: epochs of seeded permutations, read in order, so
    the order depends on (seed, step) alone and a resumed run reads what the whole run would."""
    start = step * config.batch_rows
    out = []
    while len(out) < config.batch_rows:
        epoch, offset = divmod(start + len(out), n)
        order = np.random.default_rng([config.seed, epoch]).permutation(n)
        out.extend(order[offset:offset + config.batch_rows - len(out)].tolist())
    return np.array(out)


def loss_of(model: CwmForCausalLM, batch: dict[str, torch.Tensor],
            autocast: str | None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross entropy over the batch's target positions, and their count."""
    device_type = batch["input_ids"].device.type
    context = (torch.autocast(device_type, dtype=getattr(torch, autocast)) if autocast
               else torch.autocast(device_type, enabled=False))
    with context:
        logits = model(batch["input_ids"], position_ids=batch["position_ids"],
                       document_ids=batch["document_ids"]).logits
    targets = batch["targets"]
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1), ignore_index=-100,
                                             reduction="sum")
    return loss, int((targets != -100).sum())


@torch.no_grad()
def validation_loss(model: CwmForCausalLM, rows: Rows, batch_rows: int,
                    autocast: str | None = None) -> float:
    """Mean next-token loss (nats per target token) over every validation row."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for first in range(0, len(rows), batch_rows):
        index = np.arange(first, min(first + batch_rows, len(rows)))
        loss, n = loss_of(model, rows.batch(index, device), autocast)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


def orthogonalize(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float, dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (torch.optim.Muon's, in `dtype`): the update
    with its singular values pushed toward 1."""
    a, b, c = coefficients
    x = update.to(dtype)
    if update.size(0) > update.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if update.size(0) > update.size(1) else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon (Nesterov momentum, Newton-Schulz, decoupled decay, the update scaled
    to AdamW's RMS), orthogonalizing in float32 on CPUs: torch's always does it in bfloat16,
    which is many times slower there (benchmarks/RESULTS.md, the Muon measurements)."""

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "no closures"
        for group in self.param_groups:
            assert group["adjust_lr_fn"] == "match_rms_adamw"
            lr, momentum = group["lr"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                buffer = self.state[param].setdefault("momentum_buffer",
                                                       torch.zeros_like(param.grad))
                buffer.lerp_(param.grad, 1 - momentum)
                update = param.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                dtype = torch.float32 if param.device.type == "cpu" else torch.bfloat16
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"],
                                       group["eps"], dtype)
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-lr * 0.2 * math.sqrt(max(param.shape)))


def optimizer_for(model: CwmForCausalLM, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW with weight decay on the matrices of attention and MLP only; with
    `config.optimizer == "muon"`, those matrices go to Muon instead (its update scaled to
    AdamW's RMS, so the same learning rate applies) and AdamW keeps embeddings and norms."""
    matrices, rest = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (matrices if param.dim() == 2 and "embed" not in name and "lm_head" not in name
         else rest).append(param)
    if config.optimizer not in ("adamw", "muon"):
        raise ValueError(f"unknown optimizer {config.optimizer!r}: use adamw or muon")
    adamw = dict(lr=config.lr, betas=(0.9, 0.95), eps=1e-8)
    if config.optimizer == "muon":
        return [Muon(matrices, lr=config.lr, weight_decay=config.weight_decay,
                     adjust_lr_fn="match_rms_adamw"),
                torch.optim.AdamW(rest, weight_decay=0.0, **adamw)]
    return [torch.optim.AdamW([{"params": matrices, "weight_decay": config.weight_decay},
                               {"params": rest, "weight_decay": 0.0}], **adamw)]


def train(model: CwmForCausalLM, rows: Rows, config: TrainConfig, out: Path,
          resume: bool = False, validate: Callable[[int], dict] | None = None,
          progress: Callable[[dict], None] | None = None,
          after_save: Callable[[int], None] | None = None,
          compile_model: bool = False) -> list[dict]:
    """Train `model` in place for `config.steps` steps; OUT gets the state file and the log.
    `validate(step)` returns figures to log (every `eval_every` steps and at the end);
    `progress` sees each step's log line; `after_save(step)` runs once a state is on disk.
    `compile_model`: the forward and backward through torch.compile (how the run computes,
    not what: a resumed run may compile or not)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    if config.batch_rows % (world * config.accumulation):
        raise ValueError(f"batch_rows {config.batch_rows} is not a multiple of ranks x "
                         f"accumulation ({world} x {config.accumulation})")
    device = next(model.parameters()).device
    optimizers = optimizer_for(model, config)
    step, log = 0, []
    if resume and (out / STATE).exists():
        step, log = _restore(out, model, optimizers, config, device)
    wrapped = (torch.nn.parallel.DistributedDataParallel(model) if distributed else model)
    forward = torch.compile(wrapped) if compile_model else wrapped
    model.train()
    per_rank = config.batch_rows // world
    micro = per_rank // config.accumulation
    started, tokens_seen = time.monotonic(), 0
    while step < config.steps:
        for group in (g for optimizer in optimizers for g in optimizer.param_groups):
            group["lr"] = learning_rate(config, step)
        mine = step_rows(config, step, len(rows))[rank * per_rank:(rank + 1) * per_rank]
        batches = [rows.batch(mine[i:i + micro], device) for i in range(0, per_rank, micro)]
        total, targets, norm = _optimizer_step(model, wrapped, forward, optimizers, batches,
                                               config, world)
        step += 1
        tokens_seen += config.batch_rows * rows.tokens.shape[1]
        entry = {"step": step, "loss": total / max(targets, 1),
                 "lr": learning_rate(config, step - 1), "grad_norm": norm,
                 "tokens_per_s": tokens_seen / max(time.monotonic() - started, 1e-9)}
        if validate is not None and (step == config.steps or (
                config.eval_every and step % config.eval_every == 0)):
            entry.update(validate(step))
        log.append(entry)
        if rank == 0:
            if progress:
                progress(entry)
            if step % config.save_every == 0 or step == config.steps:
                _save_state(out, model, optimizers, step, log, config)
                with (out / LOG).open("w", encoding="utf-8") as file:
                    file.writelines(json.dumps(e) + "\n" for e in log)
                if after_save:
                    after_save(step)
    return log


def _restore(out: Path, model, optimizers: list, config: TrainConfig,
             device) -> tuple[int, list[dict]]:
    """Load a saved state into the model and optimizers: (its step, its log)."""
    state = torch.load(out / STATE, map_location=device, weights_only=False)
    if {"optimizer": "adamw", **state["config"]} != asdict(config):  # (a state before Muon)
        raise ValueError(f"{out / STATE} was made with other training settings: resume "
                         "with the same ones, or train into another directory")
    model.load_state_dict(state["model"])
    saved_states = state.get("optimizers") or [state["optimizer"]]  # one, before Muon
    for optimizer, saved in zip(optimizers, saved_states, strict=True):
        optimizer.load_state_dict(saved)
    torch.set_rng_state(state["rng"])
    return state["step"], state["log"]


def _optimizer_step(model, wrapped, forward, optimizers: list, batches: list[dict],
                    config: TrainConfig, world: int) -> tuple[float, int, float]:
    """One optimizer step over this rank's micro-batches, gradients synchronised once (on the
    last): (the summed loss over every rank, the step's target count, the gradient norm)."""
    distributed = isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    device = next(model.parameters()).device
    targets = sum(int((b["targets"] != -100).sum()) for b in batches)
    if distributed:  # every rank divides by the whole step's target count
        count = torch.tensor(targets, device=device)
        torch.distributed.all_reduce(count)
        targets = int(count)
    total = 0.0
    for i, batch in enumerate(batches):
        sync = not distributed or i == len(batches) - 1
        with wrapped.no_sync() if not sync else nullcontext():
            loss, _ = loss_of(forward, batch, config.autocast)
            (loss / max(targets, 1) * world).backward()
        total += float(loss.detach())
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if distributed:
        summed = torch.tensor(total, device=device)
        torch.distributed.all_reduce(summed)
        total = float(summed)
    return total, targets, float(norm)


def _save_state(out: Path, model, optimizers: list, step: int, log: list[dict],
                config: TrainConfig) -> None:
    """Everything a resume needs, in one file written whole and then renamed into place."""
    temporary = out / (STATE + ".tmp")
    torch.save({"model": model.state_dict(),
                "optimizers": [optimizer.state_dict() for optimizer in optimizers],
                "rng": torch.get_rng_state(), "step": step, "log": log,
                "config": asdict(config)}, temporary)
    with open(temporary, "rb") as file:
        os.fsync(file.fileno())
    os.replace(temporary, out / STATE)


def model_config(size: str, vocab_size: int, context: int, special_ids: dict[str, int],
                 **overrides) -> CwmConfig:
    """A CwmConfig for a new model of preset `size` (any field overridable), over a vocabulary
    whose special tokens have `special_ids`, for sequences of `context` tokens. CWM's layer
    pattern: full attention where i % 4 == 0 and on the last layer, sliding elsewhere."""
    shape = {**SIZES[size], **overrides}
    layers = shape["num_hidden_layers"]
    eos = [special_ids[t] for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    return CwmConfig(**{
        "vocab_size": vocab_size, "max_position_embeddings": context,
        "layer_types": ["full_attention" if i % 4 == 0 or i == layers - 1
                        else "sliding_attention" for i in range(layers)],
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": True, "dtype": "float32",
        "bos_token_id": special_ids["<|begin_of_text|>"], "eos_token_id": eos,
        "pad_token_id": special_ids["<|pad|>"], **shape})
