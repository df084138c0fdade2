"""`tracekit predict` and `tracekit serve`: a model beside real traces, and behind HTTP."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tracekit.cli.common import (
    Failure,
    device_option,
    exit_help,
    model_options,
    runtime_flags,
    stderr,
    traced_for_a_model,
    tracing_options,
)
from tracekit.cli.exits import EXIT_DATA, EXIT_MODEL
from tracekit.model.prompt_lookup import DRAFT_TOKENS
from tracekit.model.spec import ModelSpec
from tracekit.prediction.predict import MAX_FRAME_TOKENS

COMPILE_HELP = ("Our runtime: compile batch-1 decode steps (torch.compile; on CUDA also "
                "replayed as a CUDA graph). Compiling takes tens of seconds once; then "
                "rollouts and sessions decode faster.")
DRAFT_HELP = ("Our runtime, greedy decoding: tokens guessed by prompt lookup and checked in "
              "each forward (0: one token per forward). Same predictions, to rounding, in fewer "
              f"forwards.  [default: {DRAFT_TOKENS}]")


@click.command(epilog=exit_help(0, 1, 2, 3, 4, 5, 6, 7, 8, 10))
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@model_options()
@click.option("--mode", type=click.Choice(["next", "rollout", "teacher-forced"]),
              default="teacher-forced", show_default=True,
              help="teacher-forced: every frame from the real frames before it; rollout: "
                   "free-running from the first K real frames; next: the frame after K.")
@click.option("--frames", "k", type=click.IntRange(min=0), default=0, show_default=True,
              help="next / rollout: start after the first K real frames.")
@click.option("--entry", metavar="NAME", help="Function to trace (as for `tracekit trace`).")
@click.option("--call", metavar="EXPR", help="Call to run (as for `tracekit trace`).")
@click.option("--max-frame-tokens", type=click.IntRange(min=1), default=MAX_FRAME_TOKENS,
              show_default=True,
              help="Tokens one predicted frame may take before it counts as malformed.")
@device_option
@click.option("--compile", "compile_decode", is_flag=True, help=COMPILE_HELP)
@click.option("--draft-tokens", type=click.IntRange(min=0), metavar="N", help=DRAFT_HELP)
@tracing_options
def predict(file: Path, spec, openai_model, mode, k, entry, call, max_frame_tokens, device,
            compile_decode, draft_tokens, tracing) -> None:
    """Trace FILE for real, predict its frames with a model, and print both side by side
    with the first divergence marked.

    \b
    tracekit predict prog.py                          (the bundled model)
    tracekit predict prog.py --mode rollout --frames 1
    tracekit predict prog.py --model ./checkpoint
    tracekit predict prog.py --model openai:http://localhost:8000 --openai-model cwm
    """
    from tracekit.cli.pretty import print_comparison
    from tracekit.evals.compare import judge_predicted_frames
    from tracekit.model.errors import BackendError, ContextError
    from tracekit.prediction.predict import load_predictor

    runtime_flags(spec, openai_model, compile_decode, draft_tokens)
    result = traced_for_a_model(file, call, entry, tracing, spec, openai_model)
    real = result.frames
    if mode != "teacher-forced" and k >= len(real):
        raise click.UsageError(f"--frames {k}: the trace has {len(real)} frames; give at most "
                               f"{len(real) - 1}")
    try:
        predictor = load_predictor(spec, openai_model, device, max_frame_tokens, compile_decode,
                                   draft_tokens)
        with stderr.status(f"predicting ({mode}, {predictor.backend.name})..."):
            if mode == "teacher-forced":
                steps, start, stop = predictor.teacher_forced(result.context, real), 0, None
                if not steps:
                    raise ContextError(f"the call frame alone does not fit the model's context "
                                       f"of {predictor.context_length} tokens: trace a "
                                       "smaller call")
            elif mode == "rollout":
                rollout = predictor.rollout(result.context, real[:k], max_frames=len(real) - k)
                steps, start, stop = rollout.steps, k, rollout.stop
            else:
                steps, start, stop = [predictor.next_frame(result.context, real[:k])], k, None
    except BackendError as exc:
        raise Failure("model", str(exc), EXIT_MODEL) from None
    matches = judge_predicted_frames(real, [s.text for s in steps], start, mode == "rollout",
                                     stop)
    shown = real[start:] if mode == "rollout" else real[start:start + len(steps)]
    print_comparison(shown, steps, matches, start, title=f"{file.name}: {mode} with {spec}")
    if mode == "teacher-forced" and len(steps) < len(real):
        click.echo(f"frames {len(steps) + 1}-{len(real)} of {len(real)} not predicted: over the "
                   f"model's context of {predictor.context_length} tokens (docs/trace-format.md "
                   "section 11)")
    if stop:
        click.echo(f"rollout stopped: {stop}" + (
            f" (the model's context of {predictor.context_length} tokens is full)"
            if stop == "context" else ""))


@click.command(epilog=exit_help(0, 2, 7, 8))
@click.argument("checkpoint", default="bundled")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--name", help="The model name clients send. Default: the directory's name.")
@device_option
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests decoded together at most.")
def serve(checkpoint: str, host, port, name, device, max_batch) -> None:
    """Serve CHECKPOINT (a directory; default: the bundled model) with our runtime behind an
    OpenAI-compatible API until Ctrl-C (exit 0): /v1/completions, /v1/chat/completions (CWM's chat,
    by the checkpoint's own template when it ships one; vLLM's chat_template_kwargs), both
    streaming with "stream": true, /v1/models, /health.

    \b
    tracekit serve                           (the bundled model, as "bundled")
    tracekit serve ./checkpoint --port 8000
    tracekit predict prog.py --model openai:http://127.0.0.1:8000 --openai-model checkpoint
    """
    from functools import partial

    from tracekit.format.tokenizer import decode, encode
    from tracekit.model.backends import RuntimeBackend
    from tracekit.model.errors import BackendError
    from tracekit.model.serve import Engine, make_server
    from tracekit.prediction.chat import END_OF_TURN, ChatError, checkpoint_template, server_prompt
    from tracekit.prediction.predict import load_predictor

    spec = ModelSpec.parse(checkpoint)
    try:
        if spec.kind != "runtime":
            raise BackendError(f"{checkpoint}: serve runs a checkpoint directory with our "
                               "runtime; pass the directory")
        predictor = load_predictor(spec, device=device)
    except BackendError as exc:
        raise Failure("model", str(exc), EXIT_MODEL) from None
    assert isinstance(predictor.backend, RuntimeBackend)  # a directory: our runtime
    tokenizer = predictor.tokenizer
    name = name or ("bundled" if checkpoint == "bundled" else Path(checkpoint).resolve().name)
    try:
        template = checkpoint_template(spec.directory())
    except ChatError as exc:
        raise Failure("model", str(exc), EXIT_MODEL) from None
    stops = tuple(tokenizer.special_ids[t] for t in END_OF_TURN if t in tokenizer.special_ids)
    try:
        engine = Engine(predictor.backend.model, partial(encode, tokenizer),
                        partial(decode, tokenizer), name, max_batch,
                        chat=server_prompt(tokenizer, template), end_of_turn=stops)
        httpd = make_server(engine, host, port)
    except OSError as exc:
        raise Failure("serve", f"cannot listen on {host}:{port} ({exc.strerror}): choose "
                               "another --port", EXIT_DATA) from None
    stderr.print(f"serving {name!r} on http://{host}:{httpd.server_address[1]}/v1 "
                 "(Ctrl-C stops)", highlight=False)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        # the engine's thread may be inside a torch op, which aborts the interpreter's
        # shutdown ("terminate called without an active exception", 134): end here instead
        httpd.server_close()
        stderr.print("stopped", highlight=False)
        sys.stdout.flush()
        os._exit(0)
