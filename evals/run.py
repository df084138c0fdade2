"""Eval runs: a prediction for every trace of a dataset, appended to OUT/predictions.jsonl as
it comes (a killed run resumes after the last whole line), then every prediction scored
against its real trace.

A prediction record is one JSON line; the same format scores predictions made anywhere
(`--predictions FILE`):

    {"id": "sample_0", "text": "<|call_sep|>{}<|action_sep|>def main():\\n<|frame_sep|>..."}
    {"id": "sample_0", "texts": ["<|call_sep|>...<|frame_sep|>", ...]}

`text` is the raw model output after the trace prompt (rollout: the whole trace, ended by
<|end_of_text|>; a model run here predicts it from the entry's real call frame on, which holds
the arguments: it writes that frame first and scores from the next, `given`: 1; output: the
return frame written after the call frame, starting with its <|return_sep|>). `texts`
(teacher-forced) holds one raw output per real frame, each made after the real frames before
it. Optional: `stop` (why a rollout stopped; "budget" marks it cut off by the token budget),
`tokens` (tokens generated), `given` (rollout: leading real frames the text repeats, not
scored), `ids` (the generated token ids, shaped as `text` or `texts`). A run that made its
predictions with a model scores them from `ids`, parsed with the model's tokenizer (exact: text
cannot tell a value that spells a special token from the token); records without ids, and
prediction files from elsewhere, are scored from text.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from tracekit.datasets.files import BuildError, load_rows
from tracekit.datasets.rows import row_trace
from tracekit.evals import baselines
from tracekit.evals.compare import Mode, TraceComparison, compare
from tracekit.format.cwm import frame_wire_text
from tracekit.format.trace import COMPLETE_STATUSES, Trace
from tracekit.killpoints import kill_point
from tracekit.model.checkpoint import CheckpointError, checkpoint_fingerprint
from tracekit.model.errors import ContextError
from tracekit.model.spec import ModelSpec
from tracekit.prediction.predict import MAX_FRAME_TOKENS

PREDICTIONS, RUN = "predictions.jsonl", "run.json"


class EvalError(Exception):
    """The eval cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class RunOptions:
    dataset: str
    mode: Mode = Mode.ROLLOUT
    model: str | None = None  # a model spec, "oracle" or "copy"; None with a predictions file
    predictions: str | None = None
    openai_model: str | None = None
    split: str | None = None
    limit: int | None = None
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    max_frame_tokens: int = MAX_FRAME_TOKENS
    budget_tokens: int = 32768  # rollout: tokens for the whole trace (the study's 32K)
    max_tokens: int | None = None  # leave out traces longer than this (prompt and end)
    device: str = "cpu"
    compile_decode: bool = False  # our runtime: batch-1 decode steps compiled
    draft_tokens: int | None = None  # our runtime: prompt-lookup guesses (None: its default)

    @property
    def predictor_name(self) -> str:
        return self.model or f"predictions from {Path(self.predictions).name}"


def load_traces(options: RunOptions) -> tuple[list[tuple[str, Trace]], Counter, set[str]]:
    """The dataset's complete traces (ok, raised, exited), in dataset order, up to `limit`;
    how many rows were skipped, by status; and the ids of every row (of the split)."""
    columns = ["id", "context", "call", "interpreter", "status", "error", "frames",
               "return_value"]
    try:
        rows = load_rows(options.dataset, options.split, columns)
    except BuildError as exc:
        raise EvalError(str(exc)) from None
    ids = Counter(row["id"] for row in rows)
    twice = next((i for i, n in ids.items() if n > 1), None)
    if twice is not None:  # predictions are matched to traces by id
        raise EvalError(f"{options.dataset} has more than one row with id {twice!r}: give "
                        "its programs distinct ids and build it again")
    skipped: Counter = Counter()
    traces = []
    for row in rows:
        if row["status"] not in COMPLETE_STATUSES or not row["frames"]:
            skipped[row["status"]] += 1
            continue
        traces.append((row["id"], row_trace(row)))
    if options.limit is not None:
        traces = traces[:options.limit]
    if not traces:
        raise EvalError(f"{options.dataset} holds no complete trace to evaluate")
    return traces, skipped, set(ids)


def start(out: Path, options: RunOptions, resume: bool) -> dict | None:
    """Check that OUT can take this run (or that a resumed run is the same one, naming what
    differs). Returns what `claim` writes into it, or None when it already holds this run."""
    if out.exists() and not out.is_dir():
        raise EvalError(f"{out} is a file: choose a directory for the report")
    how_it_runs = ("device", "compile_decode", "draft_tokens")  # not what it predicts
    described = {k: v for k, v in asdict(options).items() if k not in how_it_runs}
    manifest = json.loads((Path(options.dataset) / "manifest.json").read_text())
    described["dataset_fingerprint"] = manifest.get("fingerprint")  # the same rows
    local = options.model not in (None, *baselines.BASELINES)
    if local and not ModelSpec.parse(options.model).served:
        try:  # the same weights (a spec such as `bundled` outlives a retrained model)
            described["model_fingerprint"] = checkpoint_fingerprint(options.model)
        except (CheckpointError, OSError):
            pass  # the model's load will say what is wrong with it
    if (out / RUN).exists():
        if not resume:
            raise EvalError(f"{out} already holds an eval: pass --resume to finish it, or "
                            "choose another output directory")
        before = json.loads((out / RUN).read_text())
        differ = sorted(k for k in described.keys() | before.keys()
                        if before.get(k) != described.get(k))
        if differ:
            said = ", ".join("another build of the dataset" if k == "dataset_fingerprint"
                             else "other weights of the model" if k == "model_fingerprint"
                             else f"{k} {before.get(k)!r} there, {described.get(k)!r} now"
                             for k in differ)
            raise EvalError(f"{out} holds an eval with other options ({said}): resume with "
                            "the same ones, or choose another directory")
        return None
    if out.exists() and any(out.iterdir()):
        raise EvalError(f"{out} is not empty: choose a new output directory")
    return described


def claim(out: Path, described: dict | None) -> None:
    """Write the run's description into OUT (once the predictor is known to load)."""
    if described is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN).write_text(json.dumps(described, indent=1), encoding="utf-8")


def read_predictions(path: Path) -> tuple[dict[str, dict], int]:
    """Records by id (the last one wins) and the number of lines that are not a JSON object
    with a string id. Never raises on content: garbage lines are counted, not fatal."""
    records, bad = {}, 0
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise EvalError(f"{path}: cannot read it ({exc.strerror})") from None
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            bad += 1
            continue
        records[record["id"]] = record
    return records, bad


def _resume_file(path: Path) -> dict[str, dict]:
    """The records already written; a half-written last line (a kill mid-write) is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with path.open("r+b") as f:
            f.truncate(len(whole))
    return read_predictions(path)[0]


Predict = Callable[[list[Trace]], Iterable[tuple[int, dict]]]


def predict_all(traces: list[tuple[str, Trace]], out: Path, predict: Predict, mode: str,
                concurrency: int = 1,
                progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """Predictions for every trace, made only for those OUT/predictions.jsonl lacks; each
    record is appended (and flushed) as soon as `predict` yields it ((the trace's index in
    the list it was given, its record), in any order), and once all are made the file is
    put in the traces' order. With `concurrency` 1, `predict` is given every trace left to
    do at once (our runtime batches across them); above, one trace per call, that many calls
    at a time (a server's concurrent requests)."""
    path = out / PREDICTIONS
    records = _resume_file(path)
    todo = [(tid, trace) for tid, trace in traces if tid not in records]
    done = len(traces) - len(todo)
    if progress:
        progress(done, len(traces))
    with path.open("a", encoding="utf-8") as sink:
        def keep(tid: str, result: dict) -> None:
            nonlocal done
            record = {"id": tid, "mode": mode, **result}
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            records[tid] = record
            done += 1
            kill_point(f"predicted:{done}")
            if progress:
                progress(done, len(traces))

        if concurrency == 1:
            for i, result in predict([trace for _, trace in todo]):
                keep(todo[i][0], result)
        else:
            with ThreadPoolExecutor(concurrency) as pool:
                futures = {pool.submit(lambda one: list(predict([one])), trace): tid
                           for tid, trace in todo}
                try:
                    for future in as_completed(futures):
                        for _, result in future.result():
                            keep(futures[future], result)
                finally:
                    for future in futures:
                        future.cancel()
        os.fsync(sink.fileno())
    _in_order(path, [tid for tid, _ in traces], records)
    return records


def _in_order(path: Path, order: list[str], records: dict[str, dict]) -> None:
    """Rewrite the predictions file with the records in `order` (any others after them, as
    they were), atomically; untouched when it is in that order already."""
    ranks = {tid: rank for rank, tid in enumerate(order)}
    ids = list(records)
    ordered = sorted(ids, key=lambda tid: ranks.get(tid, len(order)))
    if ordered == ids:
        return
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as sink:
        sink.writelines(json.dumps(records[tid]) + "\n" for tid in ordered)
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(temporary, path)


def score(traces: list[tuple[str, Trace]], records: dict[str, dict], mode: str,
          tokenizer=None) -> tuple[list[TraceComparison], Counter]:
    """Compare each trace with its record; a missing or malformed record scores as an empty
    prediction. With the `tokenizer` that made them, records are scored from their `ids`.
    Returns the comparisons and the problems counted (missing, malformed)."""
    problems: Counter = Counter()
    comparisons = []
    for tid, trace in traces:
        record = records.get(tid)
        if record is None:
            problems["missing"] += 1
            record = {}
        clean = _clean(record, mode, problems)
        if tokenizer is not None:
            clean = _from_ids(clean, record.get("ids"), tokenizer)
        comparisons.append(compare(tid, trace.frames, clean))
    return comparisons, problems


def _clean(record: dict, mode: str, problems: Counter) -> dict:
    """The record as compare() reads it, in the run's mode: fields of the wrong type become
    empty (and are counted), so garbage scores as wrong instead of raising."""
    clean = {"mode": mode, "stop": record.get("stop") if isinstance(record.get("stop"), str)
             else None}
    if mode == Mode.TEACHER_FORCED:
        texts = record.get("texts")
        if record and (not isinstance(texts, list)
                       or not all(isinstance(t, str) for t in texts)):
            problems["malformed"] += 1
            texts = [t for t in texts if isinstance(t, str)] if isinstance(texts, list) else []
        clean["texts"] = texts or []
    else:
        text = record.get("text")
        if record and not isinstance(text, str):
            problems["malformed"] += 1
            text = ""
        clean["text"] = text or ""
        given = record.get("given")
        clean["given"] = given if type(given) is int and given >= 0 else 0
        if mode == Mode.REASONING:
            clean["tokens"] = record.get("tokens") if type(record.get("tokens")) is int else None
    return clean


def _from_ids(record: dict, ids, tokenizer) -> dict:
    """The clean record with each text replaced by its `ids`' segments, if they are well-formed."""
    from tracekit.format.tokenizer import id_segments

    if record["mode"] == Mode.TEACHER_FORCED:
        if (isinstance(ids, list) and len(ids) == len(record["texts"])
                and all(_token_list(one) for one in ids)):
            return {**record, "texts": [id_segments(tokenizer, one) for one in ids]}
    elif _token_list(ids):
        return {**record, "text": id_segments(tokenizer, ids)}
    return record


def _token_list(ids) -> bool:
    return isinstance(ids, list) and all(type(i) is int for i in ids)


def too_long(traces: list[tuple[str, Trace]], options: RunOptions, predictor=None
             ) -> tuple[list[tuple[str, Trace]], str | None, int, int]:
    """The traces the run predicts, and what it leaves out: (kept, why, traces, frames). A
    trace is left out when what its mode has the model read and write does not fit the
    model's context (teacher-forced and rollout: the whole trace, rollout with its end
    token; output: the call frame's prompt and the return frame), or is longer than
    --max-tokens (the whole trace with its end, in the model's tokens, else CWM's)."""
    from tracekit.format.prompts import trace_prompt_ids
    from tracekit.format.tokenizer import cwm_tokenizer

    tokenizer = predictor.tokenizer if predictor is not None else cwm_tokenizer()
    limit = predictor.context_length if predictor is not None else None
    if options.mode == Mode.REASONING:
        limit = None  # a chat prompt: chat_turn says when it does not fit ("context")

    def fits(trace: Trace) -> bool:
        if options.max_tokens is not None and len(trace_prompt_ids(
                tokenizer, trace.context, trace.frames, end=True)) > options.max_tokens:
            return False
        if limit is None:
            return True
        if options.mode == Mode.OUTPUT:
            return len(predictor.prompt(trace.context, trace.frames[:1])) + len(
                predictor.frame_ids(trace.frames[-1])) <= limit
        whole = predictor.frames_that_fit(trace.context, trace.frames) == len(trace.frames)
        return whole and (options.mode != Mode.ROLLOUT or len(predictor.prompt(
            trace.context, trace.frames)) < limit)

    kept = [(tid, trace) for tid, trace in traces if fits(trace)]
    if len(kept) == len(traces):
        return kept, None, 0, 0
    why = (f"over the context ({limit} tokens)" if options.max_tokens is None
           else f"over --max-tokens {options.max_tokens}" if limit is None
           else f"over the context ({limit} tokens) or --max-tokens {options.max_tokens}")
    ids = {tid for tid, _ in kept}
    frames = sum(len(trace.frames) for tid, trace in traces if tid not in ids)
    return kept, why, len(traces) - len(kept), frames


def model_predictor(options: RunOptions) -> tuple[Predict, str, object, object]:
    """A function that predicts a list of traces in the run's mode (`predict_all` says how),
    the backend's name, the tokenizer its ids are in (None for a baseline, which writes
    text), and the predictor (None for a baseline). Raises model.backends.BackendError when
    the model cannot be loaded."""
    if options.model in baselines.BASELINES:
        return (lambda traces: enumerate(baselines.predict(options.model, trace, options.mode)
                                         for trace in traces)), options.model, None, None
    from tracekit.prediction.predict import Sampling, load_predictor

    predictor = load_predictor(options.model, options.openai_model, options.device,
                               options.max_frame_tokens, options.compile_decode,
                               options.draft_tokens)
    sampling = Sampling(options.temperature, options.top_k, options.top_p, options.seed)
    name, tokenizer = predictor.backend.name, predictor.tokenizer
    if options.mode == Mode.REASONING:
        reason = _reasoning_predictor(options, predictor, sampling)
        return (lambda traces: enumerate(map(reason, traces))), name, None, predictor
    if options.mode == Mode.OUTPUT:
        def predict_output(trace: Trace) -> dict:
            step = predictor.next_frame(trace.context, trace.frames[:1], "return", sampling)
            return {"text": step.text, "ids": step.tokens, "tokens": len(step.logprobs)}
        return (lambda traces: enumerate(map(predict_output, traces))), name, tokenizer, \
            predictor
    if options.mode == Mode.TEACHER_FORCED:
        def teacher_forced(traces: list[Trace]) -> Iterator[tuple[int, dict]]:
            predicted = predictor.teacher_forced_stream([(t.context, t.frames) for t in traces],
                                                        sampling)
            for i, steps in predicted:
                yield i, {"texts": [s.text for s in steps], "ids": [s.tokens for s in steps],
                          "tokens": sum(len(s.logprobs) for s in steps)}
        return teacher_forced, name, tokenizer, predictor

    def rollouts(traces: list[Trace]) -> Iterator[tuple[int, dict]]:
        # From the entry's real call frame, which holds the arguments: a program traced with
        # a call of its own (`--call`, half the synthetic ones) has them nowhere else.
        predicted = predictor.rollout_stream([(t.context, t.frames[:1]) for t in traces],
                                             max_frames=100_000,
                                             budget_tokens=options.budget_tokens,
                                             sampling=sampling)
        for i, rollout in predicted:
            given = traces[i].frames[:1]
            yield i, {"text": "".join([*map(frame_wire_text, given),
                                       *(s.text for s in rollout.steps)]),
                      "ids": [*(t for f in given for t in predictor.frame_ids(f)),
                              *(t for s in rollout.steps for t in s.tokens)],
                      "given": len(given), "stop": rollout.stop,
                      "tokens": rollout.tokens_used}
    return rollouts, name, tokenizer, predictor


def _reasoning_predictor(options: RunOptions, predictor, sampling) -> Callable[[Trace], dict]:
    """Output prediction by reasoning: CWM's reasoning system prompt, the program and its call
    as the user's turn, one reply of at most `budget_tokens`; the record holds the whole reply
    (its opening <think> included), its length and whether the budget cut it off."""
    from tracekit.format.prompts import output_prediction_question
    from tracekit.model.errors import BackendError
    from tracekit.prediction.chat import ChatError, ChatOptions, chat_turn, checkpoint_template

    spec = ModelSpec.parse(options.model)
    try:
        template = None if spec.served else checkpoint_template(spec.directory())
    except ChatError as exc:  # a checkpoint whose template is broken: the model's fault
        raise BackendError(str(exc)) from None

    def predict_one(trace: Trace) -> dict:
        messages = [{"role": "user", "content": output_prediction_question(trace.context,
                                                                            trace.call)}]
        try:
            reply = chat_turn(predictor, messages, ChatOptions(), template,
                              options.budget_tokens, sampling)
        except ContextError as exc:  # the program does not fit: scored as no answer
            return {"text": "", "stop": "context", "error": str(exc)}
        opened = "<think>\n" if reply.thinking is not None else ""
        return {"text": opened + reply.text, "tokens": reply.tokens,
                "stop": None if reply.stopped else "budget"}

    return predict_one


def evaluate(options: RunOptions, out: Path, resume: bool = False, concurrency: int = 1,
             progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict]:
    """The whole run: predict (or read the predictions file), score, write the report.
    Returns the summary (metrics.json's content) and the run's description."""
    import shutil
    import time
    from datetime import datetime, timezone
    from importlib.metadata import version

    from tracekit.evals.metrics import summarize
    from tracekit.evals.report import write_report

    started = time.monotonic()
    traces, skipped, dataset_ids = load_traces(options)
    described = start(out, options, resume)
    unreadable, tokenizer, loaded = 0, None, None
    if not options.predictions:
        predict, backend, tokenizer, loaded = model_predictor(options)  # OUT untouched
    traces, why, left_out, left_out_frames = too_long(traces, options, loaded)
    if not traces:
        raise ContextError(f"every complete trace of {options.dataset} is {why}: evaluate a "
                           "model with a longer context, or traces that fit")
    if options.predictions:
        source = Path(options.predictions)
        records, unreadable = read_predictions(source)
        claim(out, described)
        if source.resolve() != (out / PREDICTIONS).resolve():
            shutil.copyfile(source, out / PREDICTIONS)  # the report keeps what it scored
        predictor = options.predictor_name
    else:
        claim(out, described)
        records = predict_all(traces, out, predict, options.mode, concurrency, progress)
        predictor = options.model if backend == options.model else f"{options.model} ({backend})"
    predicted = time.monotonic()
    comparisons, problems = score(traces, records, options.mode, tokenizer)
    if unreadable:
        problems["unreadable lines"] = unreadable
    unknown = len(set(records) - dataset_ids)
    if unknown:  # a prediction for no row of the dataset (its split): scored nowhere
        where = f"the {options.split} split" if options.split else "the dataset"
        problems[f"ids not in {where}"] = unknown
    summary = summarize(comparisons)
    scored = time.monotonic()
    info = {"dataset": str(options.dataset), "predictor": predictor, "mode": options.mode,
            "split": options.split or "all", "budget_tokens": options.budget_tokens,
            "max_frame_tokens": options.max_frame_tokens,
            "sampling": {"temperature": options.temperature, "top_k": options.top_k,
                         "top_p": options.top_p, "seed": options.seed},
            "skipped": {**skipped, **({why: left_out} if why else {})},
            "skipped_frames": {why: left_out_frames} if why else {},
            "problems": dict(problems),
            "tracekit": version("tracekit"),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": {"load and predict": round(predicted - started, 2),
                        "score": round(scored - predicted, 2)}}
    write_report(out, comparisons, summary, info)
    return summary, info
