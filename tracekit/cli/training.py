"""`tracekit train`: a CWM-architecture model trained from scratch on trace datasets."""

from __future__ import annotations

import os
from pathlib import Path

import click

from tracekit.cli.common import Failure, device_option, exit_help, progress_bar, resume_option
from tracekit.cli.exits import EXIT_DATA
from tracekit.datasets.build import BuildError
from tracekit.training.config import SIZES, TrainConfig, TrainOptions

CONFIG, OPTIONS = TrainConfig(), TrainOptions(datasets=())  # the defaults


@click.command(epilog=exit_help(0, 2, 8, 130))
@click.argument("datasets", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The checkpoint directory: config.json, model.safetensors, tokenizer.json, "
                   "README.md (the model card), training_log.jsonl, training_curve.png.")
@click.option("--size", type=click.Choice(list(SIZES)), default=OPTIONS.size,
              show_default=True, help="Shape preset (README: Train a model): tiny for tests, "
              "small for a 2-core CPU in about two hours, base for a GPU.")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=INT",
              help="Override a shape field of the preset, e.g. --set num_hidden_layers=8.")
@click.option("--steps", type=click.IntRange(min=1), default=CONFIG.steps, show_default=True)
@click.option("--batch-rows", type=click.IntRange(min=1), default=CONFIG.batch_rows,
              show_default=True,
              help="Rows per optimizer step (over every process and accumulation step).")
@click.option("--accumulation", type=click.IntRange(min=1), default=CONFIG.accumulation,
              show_default=True)
@click.option("--seq-len", type=click.IntRange(min=64), default=OPTIONS.seq_len,
              show_default=True,
              help="Tokens per row; traces longer than this are left out, never split.")
@click.option("--vocab-size", type=click.IntRange(min=512), default=OPTIONS.vocab_size,
              show_default=True,
              help="Of the byte-level BPE trained on the training split (256 special tokens "
                   "included).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=CONFIG.lr,
              show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "muon"]), default=CONFIG.optimizer,
              show_default=True, help="muon: Muon on the attention and MLP matrices (AdamW "
              "keeps embeddings and norms), at the same --lr: ~1.2x the steps' worth for ~6% "
              "slower steps at the small preset (benchmarks/RESULTS.md).")
@click.option("--warmup", type=click.IntRange(min=1), default=CONFIG.warmup, show_default=True)
@click.option("--seed", type=int, default=CONFIG.seed, show_default=True)
@click.option("--eval-every", type=click.IntRange(min=0), default=CONFIG.eval_every,
              show_default=True,
              help="Steps between validations (0: at the end only).")
@click.option("--save-every", type=click.IntRange(min=1), default=CONFIG.save_every,
              show_default=True)
@click.option("--val-traces", type=click.IntRange(min=0), default=OPTIONS.val_traces,
              show_default=True,
              help="Validation traces predicted teacher-forced at each validation (0: none; the "
                   "validation loss is measured either way).")
@click.option("--max-frame-tokens", type=click.IntRange(min=1), default=None,
              help="Leave out traces with a frame longer than this, in the model's tokens "
                   "(its separator included): frames the predictor, which cuts a frame at 256 "
                   "(--max-frame-tokens of predict and eval), could never write.")
@click.option("--loss-on-context", is_flag=True, help="Also learn to write the program text "
              "(by default the loss is on the trace's frames only).")
@click.option("--bf16", is_flag=True, help="Train under bfloat16 autocast (weights and "
              "optimizer stay float32): on GPUs, and on CPUs with bf16 instructions (1.5x "
              "the small preset's tokens/s on the 2-core CPU here: benchmarks/train.py --bf16).")
@device_option
@click.option("--compile", "compile_model", is_flag=True, help="Run the training step through "
              "torch.compile: about a minute of compiling first, then faster steps (1.0-1.3x "
              "on a quiet 2-core CPU, small preset: benchmarks/train.py --compile).")
@click.option("--init", "init", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Start from this checkpoint's weights, shape and tokenizer (one `tracekit "
                   "train` wrote, e.g. model/bundled) instead of random ones: to continue "
                   "training on more or other data with a new schedule. --size, --set and "
                   "--vocab-size then do not apply; a --seq-len past its context "
                   "lengthens the context (RoPE: training on the longer rows teaches the "
                   "new positions).")
@resume_option("Continue a run killed or stopped in OUT (the same datasets and options): it "
               "ends with the weights the whole run would have.")
def train(datasets, out: Path, size, overrides, steps, batch_rows, accumulation, seq_len,
          vocab_size, lr, optimizer, warmup, seed, eval_every, save_every, val_traces,
          max_frame_tokens, loss_on_context, bf16, device, compile_model, init, resume) -> None:
    """Train a CWM-architecture model from scratch (or from --init's weights) on DATASET...
    (`tracekit dataset build` directories: their train split trains, their validation split
    validates).

    \b
    tracekit train traces/ -o my-model/ --size small --steps 3000
    tracekit train traces/ -o my-model/ --resume          # after a crash or kill
    tracekit train more/ -o tuned/ --init model/bundled --steps 500 --lr 1e-3
    torchrun --nproc_per_node 2 -m tracekit.cli train traces/ -o my-model/   # several processes
    """
    import torch
    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

    from tracekit.training.run import run

    shape = _shape(overrides, init)
    options = TrainOptions(datasets=tuple(str(d) for d in datasets), size=size, shape=shape,
                           seq_len=seq_len, vocab_size=vocab_size, val_traces=val_traces,
                           loss_on_context=loss_on_context,
                           max_frame_tokens=max_frame_tokens, device=device,
                           init=str(init) if init is not None else None)
    config = TrainConfig(steps=steps, batch_rows=batch_rows, accumulation=accumulation, lr=lr,
                         min_lr=lr / 10, warmup=min(warmup, steps), seed=seed,
                         optimizer=optimizer,
                         eval_every=eval_every, save_every=save_every,
                         autocast="bfloat16" if bf16 else None)
    distributed = "RANK" in os.environ
    if distributed:
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank = torch.distributed.get_rank() if distributed else 0
    try:
        with progress_bar(TextColumn("training"), BarColumn(), TextColumn(
                "{task.completed}/{task.total} steps  loss {task.fields[loss]}  "
                "{task.fields[rate]} tok/s"), TimeRemainingColumn(), disable=rank != 0) as bar:
            task = bar.add_task("train", total=steps, loss="-", rate="-")

            last = run(options, config, out, resume,
                       _progress(bar, task, config, seq_len), compile_model)
        if distributed:  # the ranks shut down together, after rank 0 wrote the checkpoint (a
            torch.distributed.barrier()  # rank that left first once aborted in gloo's exit)
    except (ValueError, BuildError) as exc:
        raise Failure("train", str(exc), EXIT_DATA) from None
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
    if rank == 0:
        click.echo(f"model: {out} (step {last['step']}, loss {last['loss']:.3f})")


def _shape(overrides: tuple[str, ...], init) -> tuple[tuple[str, int], ...]:
    """--set FIELD=INT... as (field, value) pairs; a new model's only (--init keeps its own)."""
    shape = []
    for item in overrides:
        field, _, value = item.partition("=")
        if not value.isdigit():
            raise click.BadParameter(f"{item!r}: write FIELD=INTEGER", param_hint="--set")
        shape.append((field, int(value)))
    if init is not None and shape:
        raise click.UsageError("--set changes a new model's shape; --init keeps the checkpoint's")
    return tuple(shape)


def _progress(bar, task, config: TrainConfig, seq_len: int):
    """What the run reports after each step: the bar, a line at each save when there is no
    live bar (a log file), and each validation's figures."""
    def progress(entry: dict) -> None:
        bar.update(task, completed=entry["step"], loss=f"{entry['loss']:.3f}",
                   rate=f"{entry['tokens_per_s']:.0f}")
        if not bar.console.is_terminal and entry["step"] % config.save_every == 0:
            left = ((config.steps - entry["step"]) * config.batch_rows * seq_len
                    / entry["tokens_per_s"])
            bar.console.print(f"step {entry['step']}/{config.steps}: loss {entry['loss']:.3f}, "
                              f"{entry['tokens_per_s']:.0f} tokens/s, "
                              f"{left / 60:.0f} min left", highlight=False)
        shown = {k: round(v, 3) for k, v in entry.items()
                 if k in ("val_loss", "state_exact", "action_exact") and v is not None}
        if shown:
            bar.console.print(f"step {entry['step']}: {shown}", highlight=False)
    return progress
