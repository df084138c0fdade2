"""Evaluation: every metric against answers computed by hand for predictions with injected
errors, the oracle at exactly 100 on CRUXEval, garbage prediction files, a killed eval that
resumes, the report files, and `tracekit eval compare`."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import bundled_context
from tracekit.datasets.build import BuildOptions, build
from tracekit.evals.compare import (
    compare_output,
    compare_rollout,
    compare_teacher_forced,
    value_type,
)
from tracekit.evals.metrics import CWM_TABLE, METRICS, summarize, trace_counts
from tracekit.evals.run import RunOptions, evaluate
from tracekit.format.cwm import END_OF_TEXT, frame_wire_text
from tracekit.format.trace import COMPLETE_STATUSES, Frame, Trace
from tracekit.programs import sources
from tracekit.tracer.run import trace_source

ROOT = Path(__file__).resolve().parent.parent

ADD_ALL = '''def add_all(xs):  # << START_OF_TRACE
    total = 0
    for x in xs:
        total += x
    return total
'''


@pytest.fixture(scope="module")
def real() -> list[Frame]:
    """The spec's worked example (section 9), traced for real and checked frame by frame."""
    frames = Trace.from_dict(trace_source(ADD_ALL, call="add_all([3, 4])")).frames
    expected = [
        ("call", {"xs": "[3, 4]"}, "def add_all(xs):\n"),
        ("line", {"xs": ".."}, "    total = 0\n"),
        ("line", {"xs": "..", "total": "0"}, "    for x in xs:\n"),
        ("line", {"xs": "..", "total": "..", "x": "3"}, "        total += x\n"),
        ("line", {"xs": "..", "total": "3", "x": ".."}, "    for x in xs:\n"),
        ("line", {"xs": "..", "total": "..", "x": "4"}, "        total += x\n"),
        ("line", {"xs": "..", "total": "7", "x": ".."}, "    for x in xs:\n"),
        ("line", {"xs": "..", "total": "..", "x": ".."}, "    return total\n"),
        ("return", None, "    return total\n"),
    ]
    assert [(f.event, f.locals, f.source) for f in frames] == expected
    assert frames[-1].arg == "7"
    return frames


def text(frames: list[Frame], end: bool = True) -> str:
    return "".join(frame_wire_text(f) for f in frames) + (END_OF_TEXT if end else "")


def line(state: dict, source: str) -> Frame:
    return Frame("line", None, source, state)


def injected(real: list[Frame]) -> dict[str, str]:
    """One rollout per injected error, as raw model text."""
    wrong_value = list(real)
    wrong_value[4] = line({"xs": "..", "total": "4", "x": ".."}, real[4].source)
    wrong_line = list(real)
    wrong_line[3] = line(real[3].locals, "        total -= x\n")
    extra = real[:3] + [line({"xs": "..", "total": ".."}, "    for x in xs:\n")] + real[3:]
    missing = real[:5] + real[6:]
    bad_json = text(real[:2], end=False) + \
        '<|line_sep|>{"xs": "..", "total": "0"<|action_sep|>    for x in xs:\n<|frame_sep|>' + \
        text(real[3:])
    truncated = text(real[:6], end=False) + '<|line_sep|>{"xs": "..", "tot'
    return {"wrong_value": text(wrong_value), "wrong_line": text(wrong_line),
            "extra_frame": text(extra), "missing_frame": text(missing),
            "invalid_json": bad_json, "truncated": truncated}


# Computed by hand (see the derivations in the comments): (numerator, denominator).
# Frames 0-7 have a state (8), frame 8 is the return; 6 values are written in full
# (xs at 0, total at 2, 4, 6, x at 3, 5).
HAND = {
    # total "4" at frame 4: the encoded state is wrong there only, but frame 5's "total": ".."
    # then resolves to 4, so the resolved state is wrong at 4 and 5; Jaccard over pairs 2/4
    # at both.
    "wrong_value": dict(output_pass1=(1, 1), valid_format=(1, 1), state_exact=(7, 8),
                        action_exact=(9, 9), valid_json=(8, 8), key_match=(8, 8),
                        kv_match=(7, 8), state_match=(6, 8), frame_match=(7, 9),
                        frame_match_aligned=(7, 9), exact_trace=(0, 1), truncated=(0, 1),
                        micro_event=(9, 9), micro_value=(1, 1), micro_values=(5, 6),
                        parse_errors=(0, 9)),
    "wrong_line": dict(output_pass1=(1, 1), valid_format=(1, 1), state_exact=(8, 8),
                       action_exact=(8, 9), valid_json=(8, 8), key_match=(8, 8),
                       kv_match=(8, 8), state_match=(8, 8), frame_match=(8, 9),
                       frame_match_aligned=(8, 9), exact_trace=(0, 1), truncated=(0, 1),
                       micro_event=(9, 9), micro_value=(1, 1), micro_values=(6, 6),
                       parse_errors=(0, 9)),
    # an extra "for" frame after frame 2: by index every frame from 3 is shifted. Frame 3:
    # names 2/3, pairs 2/3; frames 4-6: names 1, pairs 2/4; frame 7 resolves to the real
    # state (total 7, x 4) with the wrong line; the real return meets a line frame whose
    # source happens to be right. Aligned, all 9 are right with one frame inserted.
    "extra_frame": dict(output_pass1=(1, 1), valid_format=(1, 1), state_exact=(3, 8),
                        action_exact=(4, 9), valid_json=(9, 9), key_match=(7 + 2 / 3, 8),
                        kv_match=(3 + 2 / 3 + 1.5 + 1, 8), state_match=(4, 8),
                        frame_match=(3, 9), frame_match_aligned=(9, 9), exact_trace=(0, 1),
                        truncated=(0, 1), micro_event=(8, 9), micro_value=(0, 1),
                        micro_values=(2, 6), parse_errors=(0, 10)),
    # frame 5 (x = 4) left out. By index: 5 gets total 7 with x resolving to 3 (pairs 1/5),
    # 6 gets the "return total" line (pairs 2/4), 7 the return frame (no state: 0), 8 nothing.
    # Aligned: real 5 is skipped, but the prediction's x stays 3, so 6 and 7 are still wrong.
    "missing_frame": dict(output_pass1=(1, 1), valid_format=(1, 1), state_exact=(5, 8),
                          action_exact=(6, 9), valid_json=(7, 7), key_match=(7, 8),
                          kv_match=(5 + 0.2 + 0.5, 8), state_match=(5, 8), frame_match=(5, 9),
                          frame_match_aligned=(6, 9), exact_trace=(0, 1), truncated=(0, 1),
                          micro_event=(7, 9), micro_value=(0, 1), micro_values=(5, 6),
                          parse_errors=(0, 8)),
    # frame 2's locals lack the closing brace: no state there (Jaccards 0), and frame 3's
    # "total": ".." has nothing to resolve to (pairs 2/4); from frame 4 all is right again.
    "invalid_json": dict(output_pass1=(1, 1), valid_format=(0, 1), state_exact=(7, 8),
                         action_exact=(9, 9), valid_json=(7, 8), key_match=(7, 8),
                         kv_match=(6.5, 8), state_match=(6, 8), frame_match=(7, 9),
                         frame_match_aligned=(7, 9), exact_trace=(0, 1), truncated=(0, 1),
                         micro_event=(9, 9), micro_value=(1, 1), micro_values=(5, 6),
                         parse_errors=(1, 9)),
    # cut inside frame 6's locals: frames 0-5 right, frame 6 is a line frame that cannot be
    # read, 7 and 8 are missing; no <|end_of_text|>, so truncated and no output.
    "truncated": dict(output_pass1=(0, 1), valid_format=(0, 1), state_exact=(6, 8),
                      action_exact=(6, 9), valid_json=(6, 7), key_match=(6, 8),
                      kv_match=(6, 8), state_match=(6, 8), frame_match=(6, 9),
                      frame_match_aligned=(6, 9), exact_trace=(0, 1), truncated=(1, 1),
                      micro_event=(7, 9), micro_value=(0, 1), micro_values=(5, 6),
                      parse_errors=(1, 7)),
}
DIVERGENCE = {"wrong_value": 4, "wrong_line": 3, "extra_frame": 3, "missing_frame": 5,
              "invalid_json": 2, "truncated": 6}
# what is wrong there: a state, a line, the extra "for" line where "total += x" is due, the
# "for" line where the left-out "total += x" is due, a frame that cannot be read twice
FIRST_WRONG = {"wrong_value": "state", "wrong_line": "line", "extra_frame": "line",
               "missing_frame": "line", "invalid_json": "malformed", "truncated": "malformed"}


def test_every_metric_equals_the_hand_computed_value(real):
    comparisons = [compare_rollout(name, real, prediction)
                   for name, prediction in injected(real).items()]
    for c in comparisons:
        counts = trace_counts(c)
        for key, (num, den) in HAND[c.id].items():
            assert counts[key][0] == pytest.approx(num), (c.id, key)
            assert counts[key][1] == den, (c.id, key)
        assert c.first_divergence == DIVERGENCE[c.id], c.id
        assert c.first_wrong == FIRST_WRONG[c.id], c.id
    by_id = {c.id: c for c in comparisons}
    assert by_id["extra_frame"].inserted == 1
    assert by_id["missing_frame"].aligned[5].pred is None  # the skipped real frame
    assert by_id["truncated"].predicted[-1].error.startswith("truncated")
    # the CWM table is the mean over traces of each trace's ratio
    summary = summarize(comparisons)
    for key in ("output_pass1", "valid_format", "state_exact", "action_exact", "valid_json",
                "key_match", "kv_match"):
        expected = 100 * sum(n / d for n, d in (HAND[i][key] for i in HAND)) / len(HAND)
        assert summary["metrics"][key]["value"] == pytest.approx(expected, abs=1e-3), key
    assert summary["metrics"]["output_pass1"]["value"] == pytest.approx(500 / 6, abs=1e-3)
    assert summary["divergence"]["what"] == {"line": 3, "malformed": 2, "state": 1}
    # the other kinds: a return value, an event, a trace that stops early or does not stop
    ends = {"value": text(real[:8] + [Frame("return", None, real[8].source, arg="8")]),
            "event": text(real[:8] + [line({"xs": ".."}, real[8].source)]),
            "ended early": text(real[:5]), "did not end": text(real, end=False)}
    assert {kind: compare_rollout(kind, real, t).first_wrong for kind, t in ends.items()} == \
        {kind: kind for kind in ends}
    assert compare_rollout("exact", real, text(real)).first_wrong is None
    assert summary["metrics"]["state_exact"]["value"] == pytest.approx(75.0)
    # micro: pooled frames
    assert summary["metrics"]["micro_frame"]["value"] == pytest.approx(
        100 * (7 + 8 + 3 + 5 + 7 + 6) / 54, abs=1e-3)
    # by type: xs is a list (right in all 6 traces), the rest ints
    assert summary["by_value_type"]["list"]["value"] == 100.0
    assert summary["by_value_type"]["int"]["value"] == pytest.approx(
        100 * (4 + 5 + 1 + 4 + 4 + 4) / 30, abs=1e-3)
    assert list(summary["by_output_type"]) == ["int"]  # add_all returns 7 in all six
    assert summary["by_output_type"]["int"]["value"] == pytest.approx(500 / 6, abs=1e-3)
    # the real lengths: states and lines of add_all, tokenized
    assert summary["metrics"]["state_tokens"]["n"] == 6
    for key in summary["metrics"]:
        m = summary["metrics"][key]
        assert m["low"] <= m["value"] + 1e-9 and m["value"] <= m["high"] + 1e-9, key


def test_teacher_forced_predictions_resolve_against_the_real_frames(real):
    texts = [frame_wire_text(f) for f in real]
    texts[1] = texts[1].removesuffix("<|frame_sep|>")  # all there but the closing token
    texts[5] = frame_wire_text(line({"xs": "..", "total": "..", "x": ".."}, real[5].source))
    texts[7] = END_OF_TEXT  # the model ended the trace too early
    texts[8] = frame_wire_text(Frame("return", None, real[8].source, arg="8"))
    c = compare_teacher_forced("tf", real, texts)
    counts = trace_counts(c)
    # frame 1: its state and line are read and right, but a frame without <|frame_sep|> is
    # malformed, never a right frame; frame 5: x ".." resolves to the real frame 4's x = 3
    # (real: 4); frame 7: no frame at all
    assert counts["state_exact"] == (6, 8) and counts["state_match"] == (6, 8)
    assert counts["action_exact"] == (8, 9) and counts["parse_errors"] == (2, 9)
    assert counts["frame_match"] == (5, 9) and counts["micro_value"] == (0, 1)
    assert c.frames[1].state_exact and not c.frames[1].match and c.first_wrong == "malformed"
    assert c.frames[5].kv_jaccard == pytest.approx(2 / 4)
    assert c.frames[7].pred.error == "the model ended the trace here"
    assert c.first_divergence == 1 and not c.output_correct and not c.valid_format
    assert "truncated" not in counts  # no budget in teacher forcing


def test_output_mode_scores_the_return_value_only(real):
    right = compare_output("o", real, frame_wire_text(real[-1]))
    wrong = compare_output("o", real, "<|return_sep|><|action_sep|>    return total\n"
                                      '<|arg_sep|>"8"<|frame_sep|>')
    garbage = compare_output("o", real, "\x00\x01 not a frame")
    assert right.output_correct and right.valid_format
    assert not wrong.output_correct and wrong.valid_format
    assert not garbage.output_correct and not garbage.valid_format
    assert set(trace_counts(wrong)) == {"output_pass1", "valid_format"}


def test_alignment_pairs_an_inserted_and_a_skipped_frame(real):
    both = real[:2] + [real[1]] + real[2:7] + [real[8]]  # 1 doubled, 7 skipped
    c = compare_rollout("both", real, text(both))
    assert [f.match for f in c.aligned] == [True] * 7 + [False] + [True]
    assert c.inserted == 1
    assert [f.match for f in c.frames] == [True] * 2 + [False] * 6 + [True]  # shifted by one
    from tracekit.evals.page import _program

    assert "aligned: 8/9 right (1 predicted frames inserted, 1 real frames unpaired)" in \
        _program(c)


def test_traces_too_long_to_align_keep_the_index_pairing(real, monkeypatch):
    import tracekit.evals.compare

    both = real[:2] + [real[1]] + real[2:7] + [real[8]]
    monkeypatch.setattr(tracekit.evals.compare, "ALIGN_MAX_CELLS", 10)
    c = compare_rollout("long", real, text(both))
    assert [f.match for f in c.aligned] == [f.match for f in c.frames]
    assert c.inserted == 0  # as many predicted frames as real ones


@pytest.mark.parametrize("rendered, kind", [
    ("3", "int"), ("-2.5", "float"), ("nan", "float"), ("'a'", "str"), ('"it\'s"', "str"),
    ("[1, 'x']", "list"), ("(1,)", "tuple"), ("{'a': 1}", "dict"), ("{1, 2}", "set"),
    ("set()", "set"), ("True", "bool"), ("None", "None"), ("<list_iterator object>", "other"),
    ("[<object object>]", "list"), ("{<A>: 1}", "dict"), ("b'x'", "other"), ("1j", "other"),
])
def test_value_types(rendered, kind):
    assert value_type(rendered) == kind


# ---------------------------------------------------------------------------------------------
# Runs on built datasets


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evals") / "programs"
    build(sources.python_files([ROOT / "data" / "programs"]), out, BuildOptions(), workers=2)
    return out


def run(args: list[str], code: int = 0):
    from click.testing import CliRunner

    from tracekit.cli import main

    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def test_oracle_and_copy_runs_write_every_report_file(dataset, tmp_path):
    import pandas as pd

    result = run(["eval", str(dataset), "--model", "oracle", "-o", str(tmp_path / "oracle")])
    assert "output pass@1" in result.output and "report:" in result.output
    oracle = json.loads((tmp_path / "oracle" / "metrics.json").read_text())
    run(["eval", "run", str(dataset), "--model", "copy", "--mode", "teacher-forced",
         "-o", str(tmp_path / "copy")])
    copy = json.loads((tmp_path / "copy" / "metrics.json").read_text())
    assert 0 < copy["metrics"]["frame_match"]["value"] < 100
    assert copy["metrics"]["valid_json"]["value"] == 100.0  # its states are well-formed
    frames = pd.read_parquet(tmp_path / "copy" / "frames.parquet")
    assert len(frames) == copy["frames"] == oracle["frames"]
    assert frames["match"].mean() * 100 == pytest.approx(copy["metrics"]["micro_frame"]["value"],
                                                         abs=1e-3)  # rounded to 4 places
    page = (tmp_path / "copy" / "report.html").read_text()
    assert "<table id='metrics'>" in page and page.count("data:image/png;base64,") >= 3
    assert "http://" not in page and "https://" not in page and "<script" not in page
    report_md = (tmp_path / "copy" / "report.md").read_text()
    assert "| state exact match |" in report_md and "## Worst programs" in report_md
    compared = run(["eval", "compare", str(tmp_path / "oracle"), str(tmp_path / "copy")])
    row = next(line for line in compared.output.splitlines() if "state exact match" in line)
    copy_value = copy["metrics"]["state_exact"]["value"]
    assert re.findall(r"-?\d+\.\d", row) == ["100.0", f"{copy_value:.1f}",
                                           f"{copy_value - 100:+.1f}"]  # oracle, copy, change
    assert "note: the runs differ in mode" in compared.output  # rollout against teacher-forced
    again = run(["eval", str(dataset), "--model", "oracle", "-o", str(tmp_path / "oracle")], 8)
    assert "already holds an eval" in again.output
    other = run(["eval", str(dataset), "--model", "oracle", "--mode", "output", "--resume",
                 "-o", str(tmp_path / "oracle")], 8)
    assert "other options" in other.output
    same = run(["eval", str(dataset), "--model", "oracle", "--resume", "-o",
                str(tmp_path / "oracle")])  # nothing left to predict: scored again
    assert json.loads((tmp_path / "oracle" / "metrics.json").read_text())["metrics"] == \
        oracle["metrics"] and "report:" in same.output
    both = run(["eval", str(dataset), "--model", "copy", "--predictions",
                str(tmp_path / "oracle" / "predictions.jsonl"), "-o", str(tmp_path / "x")], 2)
    assert "one of --model and --predictions, not both" in both.output
    neither = run(["eval", str(dataset), "--mode", "teacher-forced", "--limit", "1", "-o",
                   str(tmp_path / "default")])  # the bundled model
    assert "bundled (runtime) · teacher-forced · 1 traces" in neither.output
    (tmp_path / "a-file").write_text("")
    into_file = run(["eval", str(dataset), "--model", "oracle", "-o", str(tmp_path / "a-file")],
                    8)
    assert "is a file: choose a directory" in into_file.output


def test_the_demos_sample_programs_fit_the_bundled_models_context(dataset):
    """So that `tracekit demo` predicts and scores every one of them, its end included."""
    from tracekit.datasets.files import load_rows
    from tracekit.datasets.rows import row_trace
    from tracekit.format.prompts import trace_prompt_ids
    from tracekit.format.tokenizer import load_tokenizer
    from tracekit.model.checkpoint import BUNDLED

    tokenizer = load_tokenizer(BUNDLED)
    rows = load_rows(dataset)
    assert len(rows) == len(list((ROOT / "data" / "programs").glob("*.py")))
    for row in rows:
        trace = row_trace(row)
        assert len(trace_prompt_ids(tokenizer, trace.context, trace.frames, end=True)) \
            <= bundled_context(), row["id"]


def test_traces_over_the_context_are_left_out_and_counted_in_every_mode(tmp_path):
    """One short and two long programs (over the bundled model's context, counted here in
    its tokenizer): teacher-forced and rollout runs predict and score the short one only
    (an output run all three: the call and return frames fit), and metrics.json, report.md
    and the command's output count the long ones per trace and per frame; --max-tokens leaves
    out what is longer than it, for a baseline too."""
    from tracekit.datasets.files import load_rows
    from tracekit.datasets.rows import row_trace
    from tracekit.format.prompts import trace_prompt_ids
    from tracekit.format.tokenizer import cwm_tokenizer, load_tokenizer
    from tracekit.model.checkpoint import BUNDLED

    source = tmp_path / "progs.jsonl"
    body = "def f(n):\n    total = 0\n    for i in range(n):\n        total += i * i\n" \
           "    return total\n"
    context = bundled_context()
    scale = context // 1024  # 60 and 90 loops run past 1,024 tokens
    source.write_text("".join(json.dumps({"id": i, "code": body, "call": f"f({n})"}) + "\n"
                              for i, n in (("short", 2), ("long", 60 * scale),
                                           ("longer", 90 * scale))))
    run(["dataset", "build", str(source), "-o", str(tmp_path / "ds")])
    tokenizer = load_tokenizer(BUNDLED)
    lengths, frames, traces = {}, {}, {}
    for row in load_rows(tmp_path / "ds"):
        trace = traces[row["id"]] = row_trace(row)
        lengths[row["id"]] = len(trace_prompt_ids(tokenizer, trace.context, trace.frames,
                                                  end=True))
        frames[row["id"]] = len(trace.frames)
    assert lengths["short"] < context < lengths["long"] < lengths["longer"]
    over = f"over the context ({context} tokens)"
    for mode in ("teacher-forced", "rollout", "output"):
        out = tmp_path / mode
        result = run(["eval", str(tmp_path / "ds"), "--mode", mode, "-o", str(out)])
        metrics = json.loads((out / "metrics.json").read_text())
        predicted = [json.loads(line)["id"] for line in
                     (out / "predictions.jsonl").read_text().splitlines()]
        if mode == "output":  # the call frame's prompt and the return frame fit: every one
            assert sorted(predicted) == sorted(lengths) and metrics["run"]["skipped"] == {}
            continue
        assert predicted == ["short"] and metrics["traces"] == 1, mode
        assert metrics["run"]["skipped"] == {over: 2}
        assert metrics["run"]["skipped_frames"] == {over: frames["long"] + frames["longer"]}
        said = f"not predicted, {over}: 2 traces ({frames['long'] + frames['longer']} frames)"
        assert said in result.output
        assert f"not predicted, {over}: 2 traces" in (out / "report.md").read_text()
    # a baseline has no context; its trace lengths are in CWM's tokens
    cwm = {tid: len(trace_prompt_ids(cwm_tokenizer(), t.context, t.frames, end=True))
           for tid, t in traces.items()}
    cut = (cwm["long"] + cwm["longer"]) // 2
    result = run(["eval", str(tmp_path / "ds"), "--model", "copy", "--mode", "teacher-forced",
                  "--max-tokens", str(cut), "-o", str(tmp_path / "copy")])
    metrics = json.loads((tmp_path / "copy" / "metrics.json").read_text())
    assert metrics["traces"] == 2 and metrics["run"]["skipped"] == {
        f"over --max-tokens {cut}": 1}
    assert metrics["run"]["skipped_frames"] == {f"over --max-tokens {cut}": frames["longer"]}


def test_a_garbage_prediction_file_is_scored_with_its_errors_counted(dataset, tmp_path):
    from tracekit.datasets.files import load_rows

    ids = [row["id"] for row in load_rows(dataset) if row["status"] in COMPLETE_STATUSES]
    rng = random.Random(0)
    lines = [bytes(rng.choice([b for b in range(256) if b != 10]) for _ in range(80))
             for _ in range(3)]  # random bytes, no newline: not JSON
    garbage = [{"id": ids[0], "text": ""},
               {"id": ids[1], "text": "<|call_sep|>{\"a\": \"1\"}<|action_sep|>def f("},
               {"id": ids[2], "text": "".join(chr(rng.randrange(1, 0x3000)) for _ in range(300))},
               {"id": ids[3], "text": 42},
               {"id": ids[4], "texts": ["x"]},
               {"id": ids[5], "text": "<|frame_sep|><|end_of_text|><|arg_sep|>" * 5},
               {"id": "no-such-row", "text": ""}, {"no id": True}, [1, 2]]
    path = tmp_path / "garbage.jsonl"
    with path.open("wb") as f:
        for line_bytes in lines:
            f.write(line_bytes + b"\n")
        for record in garbage:
            f.write(json.dumps(record).encode() + b"\n")
        f.write(b'{"id": "' + ids[6].encode() + b'", "text": "<|line_se')  # cut mid-line
    for mode in ("rollout", "teacher-forced", "output"):
        out = tmp_path / mode
        run(["eval", str(dataset), "--predictions", str(path), "--mode", mode, "-o", str(out)])
        metrics = json.loads((out / "metrics.json").read_text())
        problems = metrics["run"]["problems"]
        assert problems["unreadable lines"] == 3 + 2 + 1
        assert problems["ids not in the dataset"] == 1  # counted, not silently dropped
        assert problems["missing"] == len(ids) - 6
        # text 42 and a texts-only record; teacher-forced wants texts, which only one has
        assert problems["malformed"] == (5 if mode == "teacher-forced" else 2)
        assert metrics["metrics"]["output_pass1"]["value"] == 0.0
        assert metrics["traces"] == len(ids)


def tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    import torch
    import transformers

    from tests.test_predict import TINY_CWM

    torch.manual_seed(seed)
    transformers.CwmForCausalLM(transformers.CwmConfig(**TINY_CWM)).save_pretrained(directory)
    return directory


def test_a_killed_eval_resumes_to_the_same_predictions(dataset, tmp_path):
    model = tiny_checkpoint(tmp_path / "tiny")
    command = [sys.executable, "-m", "tracekit.cli", "eval", str(dataset), "--model", str(model),
               "--mode", "teacher-forced", "--max-frame-tokens", "12"]
    whole = tmp_path / "whole"
    subprocess.run(command + ["-o", str(whole)], check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    # killed by SIGKILL just after its second prediction landed: by progress, not by the clock
    process = subprocess.run(command + ["-o", str(killed)], capture_output=True,
                             env={**os.environ, "TRACEKIT_KILL_AT": "predicted:2"}, timeout=600)
    assert process.returncode == -signal.SIGKILL
    predictions = killed / "predictions.jsonl"
    done = predictions.read_bytes().count(b"\n")
    rows = json.loads((whole / "metrics.json").read_text())["traces"]
    assert done == 2 < rows
    with predictions.open("ab") as f:
        f.write(b'{"id": "half a line')  # as if killed mid-write
    refused = subprocess.run(command + ["-o", str(killed)], capture_output=True, text=True)
    assert refused.returncode == 8 and "--resume" in refused.stderr
    # Ctrl-C after the third: 130, saying how to go on
    interrupted = subprocess.run(command + ["-o", str(killed), "--resume"], capture_output=True,
                                 text=True, start_new_session=True, timeout=600,
                                 env={**os.environ, "TRACEKIT_KILL_AT": "predicted:3",
                                      "TRACEKIT_KILL_SIGNAL": "INT"})
    assert interrupted.returncode == 130 and "--resume to go on" in interrupted.stderr
    assert predictions.read_bytes().count(b"\n") == 3
    subprocess.run(command + ["-o", str(killed), "--resume"], check=True, capture_output=True,
                   timeout=600)

    def records(directory):
        lines = (directory / "predictions.jsonl").read_text().splitlines()
        return sorted(lines)

    assert records(killed) == records(whole) and len(records(whole)) == rows
    first = json.loads((whole / "metrics.json").read_text())["metrics"]
    second = json.loads((killed / "metrics.json").read_text())["metrics"]
    assert first == second


def test_a_model_run_shows_rollouts_cut_off_by_the_budget(dataset, tmp_path):
    """A hand-built model that writes one valid frame forever: every rollout ends at the
    token budget, and the report says so."""
    from tests.test_predict import bigram_model
    from tracekit.model.backends import RuntimeBackend
    from tracekit.model.checkpoint import save_checkpoint
    from tracekit.prediction.predict import TracePredictor

    predictor = TracePredictor(RuntimeBackend(bigram_model([])))
    cycle = predictor.frame_ids(Frame("line", None, "    pass\n", {}))
    save_checkpoint(bigram_model(cycle), tmp_path / "loop")
    out = tmp_path / "out"
    run(["eval", str(dataset), "--model", str(tmp_path / "loop"), "--limit", "3",
         "--budget-tokens", str(3 * len(cycle) + 2), "-o", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["truncated"]["value"] == 100.0
    # three whole frames, then the budget cuts the fourth inside its locals
    assert metrics["metrics"]["valid_json"]["value"] == 75.0
    assert metrics["metrics"]["output_pass1"]["value"] == 0.0
    page = (out / "report.html").read_text()
    assert "Truncated by the token budget" in page and "3 of 3 traces" in page
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(r["stop"] == "budget" and r["tokens"] == 3 * len(cycle) + 2 for r in records)
    # each rollout started from the real call frame (this model never writes one), which is
    # in the text and scored for none: the step-0 frames are not among the compared ones
    assert all(r["given"] == 1 and r["text"].startswith("<|call_sep|>") for r in records)
    import pandas as pd

    assert pd.read_parquet(out / "frames.parquet")["step"].min() == 1


def test_the_oracle_scores_exactly_100_on_cruxeval(tmp_path):
    out = tmp_path / "crux"
    build(sources.cruxeval(), out, BuildOptions(), workers=2)
    for mode in ("rollout", "teacher-forced", "output"):
        summary, info = evaluate(RunOptions(str(out), mode, "oracle"), tmp_path / mode)
        assert summary["traces"] == 800 and not info["problems"]
        for metric in METRICS:
            found = summary["metrics"].get(metric.key)
            if found is None:
                continue
            if metric.average == "mean":  # token lengths: the prediction's equal the real ones
                continue
            assert found["value"] == (0.0 if metric.lower_is_better else 100.0), (mode, metric)
        if mode == "rollout":
            assert {m.key for m in CWM_TABLE} <= set(summary["metrics"])
            assert summary["metrics"]["state_tokens_pred"] == summary["metrics"]["state_tokens"]
            assert all(v["value"] == 100.0 for v in summary["by_value_type"].values())
            assert summary["divergence"]["exact"] == 800
        assert all(v["value"] == 100.0 for v in summary["by_output_type"].values())


def test_an_openai_server_run_with_concurrency_equals_the_runtime_run(dataset, tmp_path):
    """The same checkpoint behind `tracekit serve`'s engine, asked 4 traces at a time, gives
    the predictions the in-process runtime gives."""
    import threading

    from tracekit.format.tokenizer import cwm_tokenizer, decode, encode
    from tracekit.model.checkpoint import load_checkpoint
    from tracekit.model.serve import Engine, make_server

    checkpoint = tiny_checkpoint(tmp_path / "tiny")
    served = load_checkpoint(checkpoint)
    served.fast = True
    tokenizer = cwm_tokenizer()
    engine = Engine(served, partial(encode, tokenizer), partial(decode, tokenizer), "tiny")
    httpd = make_server(engine, port=0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    options = ["--mode", "teacher-forced", "--limit", "4", "--max-frame-tokens", "6"]
    served = ["eval", str(dataset), "--model", f"openai:http://127.0.0.1:{httpd.server_address[1]}",
              "--openai-model", "tiny", "--concurrency", "4", *options, "-o", str(tmp_path / "a")]
    try:
        run(served)
    finally:
        httpd.shutdown()
        httpd.server_close()
    run(["eval", str(dataset), "--model", str(checkpoint), *options, "-o", str(tmp_path / "b")])

    def texts(directory):
        lines = (directory / "predictions.jsonl").read_text().splitlines()
        records = [json.loads(x) for x in lines]
        return {r["id"]: r["texts"] for r in records}

    served_texts, local_texts = texts(tmp_path / "a"), texts(tmp_path / "b")
    assert len(served_texts) == 4 and served_texts == local_texts
    down = ["eval", str(dataset), "--model", "openai:http://127.0.0.1:9", "--openai-model", "x"]
    fresh = run([*down, "-o", str(tmp_path / "c")], 7)
    assert "cannot reach the server" in fresh.output and "--resume" not in fresh.output
    kept = (tmp_path / "a" / "predictions.jsonl").read_text()
    again = run([*served, "--resume"], 7)  # the same server, gone now
    assert "cannot reach the server" in again.output and "rerun with --resume" in again.output
    assert (tmp_path / "a" / "predictions.jsonl").read_text() == kept


def test_a_rollout_eval_with_compiled_decode_steps_equals_the_eager_one(dataset, tmp_path):
    """--compile and --draft-tokens change how predictions are made, not what they are: the
    same predictions, and a run resumes under other values of them."""
    checkpoint = tiny_checkpoint(tmp_path / "tiny")
    options = ["--limit", "2", "--max-frame-tokens", "12", "--budget-tokens", "200"]
    run(["eval", str(dataset), "--model", str(checkpoint), *options, "-o", str(tmp_path / "a")])
    run(["eval", str(dataset), "--model", str(checkpoint), *options, "--compile", "-o",
         str(tmp_path / "b")])
    run(["eval", str(dataset), "--model", str(checkpoint), *options, "--draft-tokens", "0",
         "-o", str(tmp_path / "c")])
    eager, compiled, one_by_one = ((tmp_path / d / "predictions.jsonl").read_text()
                                   for d in "abc")
    assert len(eager.splitlines()) == 2 and compiled == eager and one_by_one == eager
    run(["eval", str(dataset), "--model", str(checkpoint), *options, "--draft-tokens", "2",
         "--resume", "-o", str(tmp_path / "c")])
    assert (tmp_path / "c" / "predictions.jsonl").read_text() == eager


def test_a_dataset_with_repeated_ids_is_refused_in_one_line(tmp_path):
    rows = [{"id": "same", "code": "def f(x):\n    return x", "call": "f(1)"},
            {"id": "same", "code": "def g(x):\n    return x + 1", "call": "g(1)"}]
    (tmp_path / "twice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build(sources.jsonl(tmp_path / "twice.jsonl"), tmp_path / "data", BuildOptions(), workers=1)
    result = run(["eval", str(tmp_path / "data"), "--model", "oracle", "-o",
                  str(tmp_path / "out")], 8)
    assert "more than one row with id 'same'" in result.output
    assert not (tmp_path / "out").exists()  # nothing claimed
    missing = run(["eval", str(tmp_path), "--model", "oracle", "-o", str(tmp_path / "o")], 8)
    assert "not a tracekit dataset" in missing.output
    shard = next((tmp_path / "data").glob("*-*.parquet"))
    shard.write_bytes(shard.read_bytes()[:100])  # a shard cut short
    corrupt = run(["eval", str(tmp_path / "data"), "--model", "oracle", "-o",
                   str(tmp_path / "o")], 8)
    assert f"{shard.name} cannot be read" in corrupt.output and "build the dataset again" in \
        corrupt.output


def test_predictions_are_scored_from_their_token_ids_where_text_is_ambiguous():
    """A value that spells a special token: its text splits the frame at the fake separator,
    its ids (the model's real output) do not. With the tokenizer the run used, records score
    from `ids`; without one (a predictions file from elsewhere), from text."""
    from tracekit.evals.run import score
    from tracekit.format.cwm import frame_segments
    from tracekit.format.tokenizer import cwm_tokenizer, decode, encode_segments

    result = trace_source("def f():  # << START_OF_TRACE\n    s = 'a<|frame_sep|>b'\n"
                          "    return s\n")
    trace = Trace.from_dict(result)
    tok = cwm_tokenizer()
    ids = [encode_segments(tok, frame_segments(frame)) for frame in trace.frames]
    record = {"texts": [decode(tok, one) for one in ids], "ids": ids}
    by_text, _ = score([("t", trace)], {"t": record}, "teacher-forced")
    by_ids, problems = score([("t", trace)], {"t": record}, "teacher-forced", tok)
    assert not problems
    assert all(frame.match for frame in by_ids[0].frames)
    assert not all(frame.match for frame in by_text[0].frames)  # the fake separator misleads
    rollout = {"text": "".join(record["texts"]) + END_OF_TEXT,
               "ids": [t for one in ids for t in one] + [tok.special_ids[END_OF_TEXT]]}
    assert score([("t", trace)], {"t": rollout}, "rollout", tok)[0][0].exact
    assert not score([("t", trace)], {"t": rollout}, "rollout")[0][0].exact
    broken = {**record, "ids": [[-1, "x"]]}  # ids that are not token ids: text is used
    assert score([("t", trace)], {"t": broken}, "teacher-forced", tok)[0][0].frames == \
        by_text[0].frames


def test_dots_after_a_frame_switch_refer_to_nothing():
    """After the callee's frames, the caller's next frame must write its values in full
    (docs/trace-format.md section 5): a prediction that writes ".." there is wrong, even
    where the callee's last state had the same name and value (a resolver that kept its
    baseline across the switch would call it right)."""
    source = ("def g(x):\n    return x + 1\n\ndef f(x):  # << START_OF_TRACE\n    a = g(x)\n"
              "    b = a\n    return b\n")
    real = Trace.from_dict(trace_source(source, call="f(1)")).frames
    assert real[5].locals == {"x": "1", "a": "2"} and real[4].event == "return"
    texts = [frame_wire_text(frame) for frame in real]
    texts[5] = frame_wire_text(Frame("line", None, real[5].source, {"x": "..", "a": "2"}))
    judged = compare_teacher_forced("switch", real, texts)
    assert [f.match for f in judged.frames] == [True] * 5 + [False, True, True]
    assert not judged.frames[5].state_exact and not judged.frames[5].state_match
    summary = summarize([judged])
    assert summary["metrics"]["state_exact"]["value"] == pytest.approx(100 * 5 / 6)  # 6 states


def test_an_eval_resumed_with_other_weights_under_the_same_spec_is_refused(dataset, tmp_path):
    """A spec outlives its weights (`bundled` after `make model`): resuming must not mix
    the old model's predictions with the new one's."""
    checkpoint = tiny_checkpoint(tmp_path / "tiny")
    options = ["--limit", "1", "--max-frame-tokens", "8", "--budget-tokens", "40"]
    run(["eval", str(dataset), "--model", str(checkpoint), *options, "-o", str(tmp_path / "a")])
    run(["eval", str(dataset), "--model", str(checkpoint), *options, "--resume", "-o",
         str(tmp_path / "a")])  # the same weights: resumes (nothing left to do)
    tiny_checkpoint(checkpoint, seed=1)
    refused = run(["eval", str(dataset), "--model", str(checkpoint), *options, "--resume", "-o",
                   str(tmp_path / "a")], 8)
    assert "other weights of the model" in refused.output


def test_a_large_checkpoints_fingerprint_reads_spread_blocks_not_every_byte(tmp_path):
    """Past 4 MB of weights the fingerprint reads 64 blocks spread over each file: a change in
    any of them (as retraining makes everywhere) or in the size changes it; a byte between the
    blocks does not (the price of reading 4 MB of a 60 GB checkpoint)."""
    import random

    from tracekit.model.checkpoint import (
        FINGERPRINT_BLOCK,
        FINGERPRINT_BLOCKS,
        checkpoint_fingerprint,
    )

    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    data = bytearray(random.Random(0).randbytes(9 << 20))
    weights.write_bytes(data)
    first = checkpoint_fingerprint(str(tmp_path))
    start = [i * (len(data) - FINGERPRINT_BLOCK) // (FINGERPRINT_BLOCKS - 1)
             for i in range(FINGERPRINT_BLOCKS)]
    for where, changes in ((0, True), (start[5] + 100, True), (len(data) - 1, True),
                           (start[1] - 10, False)):
        edited = bytearray(data)
        edited[where] ^= 0xFF
        weights.write_bytes(edited)
        assert (checkpoint_fingerprint(str(tmp_path)) != first) is changes, where
    weights.write_bytes(data + b"\0")
    assert checkpoint_fingerprint(str(tmp_path)) != first
    weights.write_bytes(data)
    assert checkpoint_fingerprint(str(tmp_path)) == first


def test_the_plots_show_each_bars_n_and_count_traces_in_words():
    """A bar of 0 still shows its n (in its label, not white on the bar), and one exact trace
    is "1 trace"."""
    import matplotlib.pyplot as plt

    from tracekit.evals.plots import figures

    made = figures({"step_curve": {"step": []}, "by_length": [],
                    "by_value_type": {"int": {"value": 0.0, "low": 0.0, "high": 0.0, "n": 3},
                                      "str": {"value": 50.0, "low": 20.0, "high": 80.0, "n": 4}},
                    "divergence": {"index": [2, 3], "exact": 1}})
    typed = made["Accuracy by value type"].axes[0]
    assert [t.get_text() for t in typed.get_yticklabels()] == ["int (n=3)", "str (n=4)"]
    assert made["First divergence"].axes[0].get_title() == \
        "First divergence (1 trace exact, not shown)"
    for fig in made.values():
        plt.close(fig)


def test_the_eval_speed_benchmark_finds_both_paths_equal(capsys):
    """benchmarks/eval_speed.py on a few CRUXEval programs with the bundled model: a
    teacher-forced eval that decodes every frame and one that takes exact match from the
    trace's forward, and rollouts one program at a time and batched, write the same
    predictions and the same metrics."""
    from tests.conftest import benchmark_module

    benchmark_module("eval_speed").main(["--source", "cruxeval:6"])
    out = capsys.readouterr().out
    assert "decode every frame" in out and "exact from one forward" in out
    assert "one program at a time" in out and "programs batched" in out
    assert re.search(r"predictions: 0 of \d+ frames differ; metrics identical", out), out
    assert re.search(r"predictions: 0 of \d+ rollouts differ; metrics identical", out), out
    floor = re.search(r"floor: the new path's one forward over each real trace took "
                      r"(\d+\.\d) s; a run of those forwards and nothing else would be "
                      r"(\d+\.\d)x the old path's whole run", out)
    assert floor and float(floor[1]) > 0, out
