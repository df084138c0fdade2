"""Metrics over compared traces, with the formulas they compute.

Every metric is a pair of per-trace counts (numerator, denominator) and one of two averages:

- macro: the mean over traces (with a non-zero denominator) of numerator / denominator. The
  CWM report's table is macro-averaged per trace.
- micro: the sum of numerators over the sum of denominators, pooling every frame.

95% confidence intervals come from a bootstrap over traces (1,000 resamples, fixed seed; the
percentile interval), so frames of one trace are resampled together.

"call/line frames" below are the real trace's frames with a state; the predicted frame paired
with real frame i is the prediction's frame i (by index) unless the metric says aligned.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tracekit.evals.compare import (
    ANSWERS_ONLY,
    VALUE_TYPES,
    Mode,
    TraceComparison,
    has_event,
    value_type,
)
from tracekit.format.cwm import state_json
from tracekit.format.trace import Frame

BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED = 1000, 0
LENGTH_BUCKETS = (1, 9, 17, 33, 65, 129, 257, 513)  # real frames: 1-8, 9-16, ..., 513+
STEP_BUCKETS = (0, 1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    average: str  # "macro" | "micro" | "mean" (a plain mean per trace, not a rate)
    formula: str
    lower_is_better: bool = False


CWM_TABLE = (
    Metric("output_pass1", "output pass@1", "macro",
           "traces whose predicted final return value equals the real one / traces "
           "(rollout: the prediction must end with <|end_of_text|> after that return frame)"),
    Metric("valid_format", "valid trace format", "macro",
           "traces whose every predicted frame parses (and, in rollout, that end with "
           "<|end_of_text|>) / traces"),
    Metric("state_exact", "state exact match", "macro",
           "per trace: call/line frames whose predicted \"..\"-encoded state equals the real "
           "one / call/line frames; mean over traces"),
    Metric("action_exact", "action exact match", "macro",
           "per trace: frames whose predicted source line equals the real one / frames; mean "
           "over traces"),
    Metric("valid_json", "valid JSON states", "macro",
           "per trace: predicted call/line frames whose LOCALS is a JSON object of strings / "
           "predicted call/line frames; mean over traces that have any"),
    Metric("key_match", "key match (Jaccard over names)", "macro",
           "per trace: mean over call/line frames of |names(pred) & names(real)| / "
           "|names(pred) | names(real)|; mean over traces"),
    Metric("kv_match", "key+value match (Jaccard over pairs)", "macro",
           "as key match, over (name, value) pairs with \"..\" resolved"),
    Metric("state_tokens", "avg state length (tokens, real)", "mean",
           "per trace: mean CWM tokens of json.dumps(locals) over real call/line frames; mean "
           "over traces"),
    Metric("action_tokens", "avg action length (tokens, real)", "mean",
           "per trace: mean CWM tokens of the real source lines; mean over traces"),
)
MORE = (
    Metric("state_match", "state match, \"..\" resolved", "macro",
           "as state exact match, comparing the states with \"..\" resolved"),
    Metric("frame_match", "frame match (by index)", "macro",
           "per trace: frames whose event, source line and resolved state (or value) are all "
           "right / frames; mean over traces"),
    Metric("frame_match_aligned", "frame match (aligned)", "macro",
           "as frame match, pairing frames by the alignment that allows skipped and inserted "
           "frames"),
    Metric("exact_trace", "full-trace exact match", "macro",
           "traces with every frame right, no frame extra and (rollout) an <|end_of_text|> / "
           "traces"),
    Metric("truncated", "truncated by the token budget", "macro",
           "traces whose prediction the token budget cut off / traces (reasoning: inside "
           "<think>)", lower_is_better=True),
    Metric("reasoning_tokens", "avg reply length (tokens)", "mean",
           "reasoning mode: tokens of the reply, thinking included / traces"),
    Metric("micro_event", "event match (frames)", "micro",
           "frames whose predicted event equals the real one / frames"),
    Metric("micro_action", "action match (frames)", "micro",
           "frames with the right source line / frames"),
    Metric("micro_state_exact", "state exact match (frames)", "micro",
           "call/line frames with the right \"..\"-encoded state / call/line frames"),
    Metric("micro_state_match", "state match, resolved (frames)", "micro",
           "call/line frames with the right resolved state / call/line frames"),
    Metric("micro_key", "key match (frames)", "micro",
           "sum of name Jaccards / call/line frames"),
    Metric("micro_kv", "key+value match (frames)", "micro",
           "sum of pair Jaccards / call/line frames"),
    Metric("micro_value", "return/exception value match", "micro",
           "return/exception frames with the right event and value / return/exception frames"),
    Metric("micro_values", "changed values right", "micro",
           "variables written in full in the real frame (new or changed) that the prediction "
           "has right after resolving \"..\" / such variables"),
    Metric("micro_frame", "frame match (frames)", "micro",
           "frames with event, line and state (or value) right / frames"),
    Metric("micro_frame_aligned", "frame match, aligned (frames)", "micro",
           "as frame match (frames), with the aligned pairing"),
    Metric("parse_errors", "predicted frames with parse errors", "micro",
           "predicted frames the parser could not read / predicted frames",
           lower_is_better=True),
    Metric("state_tokens_pred", "avg state length (tokens, predicted)", "mean",
           "as avg state length, over the predicted call/line frames"),
    Metric("action_tokens_pred", "avg action length (tokens, predicted)", "mean",
           "as avg action length, over the predicted frames"),
)
METRICS = CWM_TABLE + MORE
# What a metric means in each mode: output and reasoning modes score only the return value.
OUTPUT_MODE_METRICS = ("output_pass1", "valid_format", "truncated", "reasoning_tokens")
# In reasoning mode the format checked is the answer's: [OUTPUT] ... [/OUTPUT] after </think>.
REASONING_LABELS = {"valid_format": "answer found ([OUTPUT] after the thinking)"}


def shown_metrics(mode: str) -> list[tuple[Metric, str]]:
    """(metric, label) of what a run's table shows: the CWM table, or in output and reasoning
    modes the return-value metrics."""
    if mode not in ANSWERS_ONLY:
        return [(m, m.label) for m in CWM_TABLE]
    labels = REASONING_LABELS if mode == Mode.REASONING else {}
    return [(m, labels.get(m.key, m.label)) for m in METRICS if m.key in OUTPUT_MODE_METRICS]
# The CWM tech report's numbers on CRUXEval (spec section 10: full-trace prediction, greedy).
PUBLISHED_CRUXEVAL = {"output_pass1": 88.0, "valid_format": 99.6, "state_exact": 96.9,
                      "action_exact": 96.5, "valid_json": 100.0, "key_match": 99.1,
                      "kv_match": 98.1, "state_tokens": 11.7, "action_tokens": 11.2}


@lru_cache(maxsize=1 << 16)
def _tokens(text: str) -> int:
    from tracekit.format.tokenizer import cwm_tokenizer, encode

    return len(encode(cwm_tokenizer(), text))


def _state_tokens(frame: Frame) -> int:
    return _tokens(state_json(frame.locals))


def trace_counts(c: TraceComparison) -> dict[str, tuple[float, float]]:
    """Every metric's (numerator, denominator) for one trace."""
    one = lambda flag: (float(flag), 1.0)  # noqa: E731
    counts = {"output_pass1": one(c.output_correct), "valid_format": one(c.valid_format)}
    if c.mode == Mode.REASONING:
        counts["truncated"] = one(c.truncated)
        if c.reasoning_tokens is not None:
            counts["reasoning_tokens"] = (float(c.reasoning_tokens), 1.0)
    if c.mode in ANSWERS_ONLY:
        return counts
    states = [f for f in c.frames if f.real.locals is not None]
    values = [f for f in c.frames if f.real.locals is None]
    pred_states = [f for f in c.predicted if f.event in ("call", "line") and has_event(f)]
    changed = [v for f in states for v in f.variables if v[2]]
    n = float(len(c.frames))
    counts.update({
        "state_exact": (sum(bool(f.state_exact) for f in states), len(states)),
        "action_exact": (sum(f.action_match for f in c.frames), n),
        "valid_json": (sum(f.locals is not None for f in pred_states), len(pred_states)),
        "key_match": (sum(f.key_jaccard for f in states), len(states)),
        "kv_match": (sum(f.kv_jaccard for f in states), len(states)),
        "state_tokens": (sum(_state_tokens(f.real) for f in states), len(states)),
        "action_tokens": (sum(_tokens(f.real.source) for f in c.frames), n),
        "state_match": (sum(bool(f.state_match) for f in states), len(states)),
        "frame_match": (sum(f.match for f in c.frames), n),
        "frame_match_aligned": (sum(f.match for f in c.aligned), n),
        "exact_trace": one(c.exact),
        "parse_errors": (c.parse_errors, len(c.predicted)),
        "state_tokens_pred": (sum(_state_tokens(f) for f in pred_states if f.locals is not None),
                              sum(f.locals is not None for f in pred_states)),
        "action_tokens_pred": (sum(_tokens(f.source) for f in c.predicted if f.error is None),
                               sum(f.error is None for f in c.predicted)),
    })
    if c.mode == Mode.ROLLOUT:
        counts["truncated"] = one(c.truncated)
    for key, name in (("micro_state_exact", "state_exact"), ("micro_state_match", "state_match"),
                      ("micro_key", "key_match"), ("micro_kv", "kv_match"),
                      ("micro_action", "action_exact"), ("micro_frame", "frame_match"),
                      ("micro_frame_aligned", "frame_match_aligned")):
        counts[key] = counts[name]
    counts["micro_event"] = (sum(f.event_match for f in c.frames), n)
    counts["micro_value"] = (sum(bool(f.value_match) for f in values), len(values))
    counts["micro_values"] = (sum(v[3] for v in changed), len(changed))
    return counts


def summarize(comparisons: list[TraceComparison]) -> dict:
    """Every metric with its 95% CI, and the breakdowns, as plain JSON-ready data."""
    per_trace = [trace_counts(c) for c in comparisons]
    metrics = {}
    for metric in METRICS:
        pairs = [counts[metric.key] for counts in per_trace if metric.key in counts]
        if not pairs or not any(d for _, d in pairs):
            continue
        metrics[metric.key] = _estimate(pairs, metric.average)
    return {
        "traces": len(comparisons),
        "frames": sum(len(c.real) for c in comparisons),
        "metrics": metrics,
        "by_value_type": _by_value_type(comparisons),
        "by_event": _by_event(comparisons),
        "by_output_type": _by_output_type(comparisons),
        "by_length": _by_length(comparisons),
        "by_step": _by_step(comparisons),
        "step_curve": _step_curve(comparisons),
        "divergence": _divergence(comparisons),
        "output_by_id": {c.id: c.output_correct for c in comparisons},
    }


def _estimate(pairs: list[tuple[float, float]], average: str) -> dict:
    """Value and bootstrap 95% CI of one metric, in percent for rates. Every metric draws the
    same resamples (one seed), so equal inputs give equal intervals."""
    num = np.array([p[0] for p in pairs], dtype=float)
    den = np.array([p[1] for p in pairs], dtype=float)
    scale = 1.0 if average == "mean" else 100.0
    if average == "micro":
        value, n = num.sum() / den.sum(), int(den.sum())
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0: dropped below
            boot = [num[idx].sum(1) / den[idx].sum(1) for idx in _resamples(len(num))]
    else:
        ratios = num[den > 0] / den[den > 0]
        value, n = ratios.mean(), len(ratios)
        boot = [ratios[idx].mean(1) for idx in _resamples(len(ratios))]
    boot = np.concatenate(boot)
    boot = boot[np.isfinite(boot)]  # a resample with no frame of the kind has no rate
    low, high = np.percentile(boot, [2.5, 97.5]) if len(boot) else (value, value)
    return {"value": round(float(value) * scale, 4), "low": round(float(low) * scale, 4),
            "high": round(float(high) * scale, 4), "n": n}


def _resamples(count: int, cells: int = 1 << 23):
    """BOOTSTRAP_SAMPLES resamples of `count` indices (with replacement), in chunks of at
    most `cells` indices, so memory stays bounded on large evals."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    rows = max(1, cells // max(1, count))
    for first in range(0, BOOTSTRAP_SAMPLES, rows):
        yield rng.integers(0, count, (min(rows, BOOTSTRAP_SAMPLES - first), count))


def _by_value_type(comparisons) -> dict:
    """Changed values right, by the real value's type (micro, with CI)."""
    return _micro_by(comparisons, VALUE_TYPES, lambda c, kind: [
        v[3] for f in c.frames if f.real.locals is not None
        for v in f.variables if v[2] and v[1] == kind])


def _by_output_type(comparisons) -> dict:
    """Output pass@1 by the type of the entry's real return value (with CI)."""
    out = {}
    kinds = [value_type(c.real[-1].arg or "") if c.real else "other" for c in comparisons]
    for kind in VALUE_TYPES:
        pairs = [(float(c.output_correct), 1.0) for c, k in zip(comparisons, kinds) if k == kind]
        if pairs:
            out[kind] = _estimate(pairs, "macro")
    return out


def _by_event(comparisons) -> dict:
    """Frame match by the real frame's event (micro, with CI)."""
    return _micro_by(comparisons, ("call", "line", "return", "exception"), lambda c, event: [
        f.match for f in c.frames if f.real.event == event])


def _micro_by(comparisons, groups, outcomes) -> dict:
    """For each group, the micro rate of `outcomes(comparison, group)` (booleans) with its
    CI; groups no trace has are left out."""
    out = {}
    for group in groups:
        pairs = [(sum(seen), len(seen)) for seen in (outcomes(c, group) for c in comparisons)]
        if any(d for _, d in pairs):
            out[group] = _estimate(pairs, "micro")
    return out


def _bucket(value: int, edges: tuple[int, ...]) -> str:
    index = max(i for i, edge in enumerate(edges) if value >= edge)
    low = edges[index]
    high = edges[index + 1] - 1 if index + 1 < len(edges) else None
    return str(low) if high == low else f"{low}-{high}" if high is not None else f"{low}+"


def _by_length(comparisons) -> list[dict]:
    """By the real trace's length in frames: traces, frame match (macro), output pass@1,
    truncated, each in percent."""
    groups: dict[str, list[TraceComparison]] = {}
    for c in _traced(comparisons):
        groups.setdefault(_bucket(max(1, len(c.real)), LENGTH_BUCKETS), []).append(c)
    rows = []
    for edge in LENGTH_BUCKETS:
        label = _bucket(edge, LENGTH_BUCKETS)
        group = groups.get(label)
        if not group:
            continue
        frames = [sum(f.match for f in c.frames) / len(c.frames) for c in group if c.frames]
        rows.append({
            "bucket": label, "traces": len(group),
            "frame_match": round(100 * float(np.mean(frames)), 4) if frames else None,
            "output_pass1": round(100 * float(np.mean([c.output_correct for c in group])), 4),
            "truncated": round(100 * float(np.mean([c.truncated for c in group])), 4),
        })
    return rows


def _by_step(comparisons) -> list[dict]:
    """Frame match (micro) by the frame's index in its trace, bucketed."""
    counts: dict[str, list[int]] = {}
    for c in _traced(comparisons):
        for f in c.frames:
            entry = counts.setdefault(_bucket(f.step, STEP_BUCKETS), [0, 0])
            entry[0] += f.match
            entry[1] += 1
    rows = []
    for edge in STEP_BUCKETS:
        label = _bucket(edge, STEP_BUCKETS)
        if label in counts:
            right, total = counts[label]
            rows.append({"bucket": label, "frames": total,
                         "frame_match": round(100 * right / total, 4)})
    return rows


def _step_curve(comparisons, min_frames: int = 5) -> dict:
    """Frame match (micro) at each step index while at least `min_frames` traces reach it."""
    right: list[int] = []
    total: list[int] = []
    for c in _traced(comparisons):
        for f in c.frames:
            while len(total) <= f.step:
                right.append(0)
                total.append(0)
            right[f.step] += f.match
            total[f.step] += 1
    steps = [i for i, t in enumerate(total) if t >= min(min_frames, len(comparisons))]
    return {"step": steps, "frame_match": [round(100 * right[i] / total[i], 4) for i in steps],
            "frames": [total[i] for i in steps]}


def _traced(comparisons: list[TraceComparison]) -> list[TraceComparison]:
    """Comparisons with frames by step (output mode has only the return frame)."""
    return [c for c in comparisons if c.mode not in ANSWERS_ONLY]


def _divergence(comparisons) -> dict:
    """Where predictions first go wrong: the index, the index over the trace's length, and
    how many traces go wrong first by each kind of mistake (`TraceComparison.first_wrong`),
    the commonest first."""
    inexact = [c for c in comparisons
               if c.first_divergence is not None and c.mode not in ANSWERS_ONLY]
    return {"exact": sum(c.first_divergence is None for c in comparisons),
            "index": [c.first_divergence for c in inexact],
            "relative": [round(c.first_divergence / max(1, len(c.real)), 4) for c in inexact],
            "what": dict(Counter(c.first_wrong for c in inexact).most_common())}
