"""`tracekit train`: the tokenizer it trains, packing, a loss that falls, an exact resume after
kill -9, two processes under torchrun equal to one, checkpoints transformers loads, leakage."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tracekit.datasets.build import BuildOptions, build
from tracekit.format.cwm import SPECIAL_TOKENS
from tracekit.format.prompts import trace_text
from tracekit.format.tokenizer import decode, encode, parse_ids
from tracekit.format.trace import Trace
from tracekit.programs import sources
from tracekit.tracer.context import call_from_comment
from tracekit.tracer.run import trace_source
from tracekit.training.data import function_shapes, leaks, pack, trace_ids, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--size", "tiny", "--seq-len", "512", "--vocab-size", "600", "--batch-rows", "4",
        "--warmup", "5", "--val-traces", "3", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "ds"
    build(sources.synthetic(160, seed=11, size=2), out, BuildOptions(split=(9, 1, 0)), workers=2)
    return out


@pytest.fixture(scope="module")
def traces() -> list[Trace]:
    return [Trace.from_dict(trace_source(p.source, call=p.call, entry=p.entry))
            for p in sources.synthetic(40, seed=5)]


@pytest.fixture(scope="module")
def tokenizer(traces, tmp_path_factory):
    return train_tokenizer([trace_text(t) for t in traces], 600,
                           tmp_path_factory.mktemp("tok") / "tokenizer.json")


def train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracekit.cli", "train", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=600,
                          start_new_session=True)  # a Ctrl-C it sends itself stays its own


def test_the_tokenizer_splits_digits_and_keeps_cwm_special_tokens(tokenizer, traces):
    assert tokenizer.vocab_size == 600
    assert set(tokenizer.special_ids) == set(SPECIAL_TOKENS)  # every one, by name
    digits = [decode(tokenizer, [i]) for i in encode(tokenizer, "x = 12345")]
    assert digits[-5:] == ["1", "2", "3", "4", "5"]
    text = trace_text(traces[0])
    ids = encode(tokenizer, text)
    assert decode(tokenizer, ids) == text
    frames = parse_ids(tokenizer, ids).frames
    assert [(f.event, f.source, f.locals, f.arg) for f in frames] == \
        [(f.event, f.source, f.locals, f.arg) for f in traces[0].frames]


def test_packing_keeps_traces_whole_and_apart(tokenizer, traces):
    from tracekit.model.modeling import CwmForCausalLM
    from tracekit.training.loop import init_weights, model_config

    lengths = [len(trace_ids(tokenizer, t)[0]) for t in traces]
    length = sorted(lengths)[len(lengths) // 2] + 10  # about half the traces fit
    packed = pack(traces, tokenizer, length)
    assert packed.dropped == sum(n > length for n in lengths) > 0
    assert packed.traces == len(traces) - packed.dropped and packed.tokens == sum(
        n for n in lengths if n <= length)
    rows = packed.rows
    bos, pad = tokenizer.special_ids["<|begin_of_text|>"], tokenizer.special_ids["<|pad|>"]
    for tokens, documents, targets in zip(rows.tokens, rows.documents, rows.targets):
        starts = [0] + [i for i in range(1, length) if documents[i] != documents[i - 1]]
        for a, b in zip(starts, starts[1:] + [length]):
            assert tokens[a] in (bos, pad)  # each document starts with BOS (or is padding)
        real = targets != -100
        assert (targets[:-1][real[:-1]] == tokens[1:][real[:-1]]).all()  # the next token
        assert not real[np.array(starts[1:]) - 1].any()  # no target across a boundary
    # a trace packed beside others gives the logits it gives alone: attention and positions
    # restart with it
    torch.manual_seed(0)
    model = CwmForCausalLM(model_config("tiny", tokenizer.vocab_size, length,
                                        tokenizer.special_ids)).eval()
    init_weights(model)
    row = next(r for r in range(len(rows)) if rows.documents[r].max() >= 2)
    batch = rows.batch(np.array([row]), "cpu")
    documents = rows.documents[row]
    second = np.flatnonzero(documents == 1)
    with torch.no_grad():
        packed_logits = model(batch["input_ids"], position_ids=batch["position_ids"],
                              document_ids=batch["document_ids"]).logits[0, second]
        alone = model(batch["input_ids"][:, second]).logits[0]
    assert (packed_logits - alone).abs().max() <= 1e-5


def test_packing_leaves_out_traces_with_a_frame_the_predictor_could_not_write(tokenizer,
                                                                              traces):
    """--max-frame-tokens: a trace with a frame longer than the cap (the frame's tokens, its
    closing separator included, each frame encoded on its own) is left out and counted."""
    from tracekit.format.cwm import frame_wire_text

    longest = [max(len(encode(tokenizer, frame_wire_text(f))) for f in t.frames) for t in traces]
    cap = sorted(longest)[len(longest) // 2]
    row = max(len(trace_ids(tokenizer, t)[0]) for t in traces)  # every trace fits a row
    packed = pack(traces, tokenizer, row, max_frame_tokens=cap)
    assert packed.long_frames == sum(n > cap for n in longest) > 0
    assert packed.traces == sum(n <= cap for n in longest) > 0 and packed.dropped == 0
    assert pack(traces, tokenizer, row).traces == len(traces)


def test_a_compiled_training_step_computes_what_the_eager_one_does(tokenizer, traces, tmp_path):
    """--compile changes how the step runs, not what: the same losses and weights (within
    float rounding of fused kernels) over three steps from the same start."""
    from tracekit.model.modeling import CwmForCausalLM
    from tracekit.training import loop

    rows = pack(traces, tokenizer, 512).rows
    config = loop.TrainConfig(steps=3, batch_rows=2, warmup=1, eval_every=0, save_every=3)
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = CwmForCausalLM(loop.model_config("tiny", tokenizer.vocab_size, 512,
                                                 tokenizer.special_ids))
        loop.init_weights(model)
        model.fast = True
        log = loop.train(model, rows, config, tmp_path / str(compiled), compile_model=compiled)
        runs.append(([e["loss"] for e in log], model.state_dict()))
    (eager, eager_weights), (compiled, compiled_weights) = runs
    assert compiled == pytest.approx(eager, rel=1e-4)
    for name, weight in eager_weights.items():
        assert torch.allclose(weight, compiled_weights[name], atol=1e-4), name


def test_our_muon_is_torchs_with_a_float32_orthogonalization_on_cpu():
    """In bfloat16 the orthogonalization is torch.optim.Muon's bit for bit; a whole step in
    float32 (ours, on a CPU) lands within bfloat16's rounding of torch's step."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    from tracekit.training import loop

    torch.manual_seed(0)
    for shape in ((48, 80), (80, 48)):
        grad = torch.randn(shape)
        ours = loop.orthogonalize(grad, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.bfloat16)
        assert torch.equal(ours, _zeropower_via_newtonschulz(grad, (3.4445, -4.775, 2.0315),
                                                             5, 1e-7))
    starts = [torch.randn(48, 80), torch.randn(80, 48)]
    weights = [torch.nn.Parameter(w.clone()) for w in starts]
    copies = [torch.nn.Parameter(w.clone()) for w in starts]
    options = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    optimizers = (loop.Muon(weights, **options), torch.optim.Muon(copies, **options))
    for _ in range(3):
        for params, optimizer in zip((weights, copies), optimizers):
            for param in params:
                param.grad = torch.sin(param.detach() * 3)  # the same function of the weights
            optimizer.step()
    for ours, theirs, start in zip(weights, copies, starts):
        moved = (theirs.detach() - start).abs().max()
        assert moved > 0.02 and (ours.detach() - theirs.detach()).abs().max() < 0.03 * moved


def test_muon_trains_the_matrices_and_a_stopped_run_resumes_to_the_same_weights(tokenizer,
                                                                                traces, tmp_path):
    """--optimizer muon: Muon holds the attention and MLP matrices (AdamW the embeddings and
    norms), the loss falls, and a run stopped right after a save resumes, both optimizers'
    states restored, to the uninterrupted run's weights bit for bit; so does an AdamW run
    from a state file written before Muon existed."""
    from tracekit.model.modeling import CwmForCausalLM
    from tracekit.training import loop

    # short traces, so that the 12 steps read 24 of 21 rows: each step another pair, and an
    # epoch's end half way (a resume that read its rows from step 0 again would differ)
    short = [Trace.from_dict(trace_source(p.source, call=p.call, entry=p.entry))
             for p in sources.basic(40, seed=5)]
    rows = pack(short, tokenizer, 512).rows
    assert len(rows) == 21
    config = loop.TrainConfig(steps=12, batch_rows=2, warmup=2, eval_every=0, save_every=6,
                              lr=3e-3, optimizer="muon")

    def fresh() -> CwmForCausalLM:
        torch.manual_seed(0)
        model = CwmForCausalLM(loop.model_config("tiny", tokenizer.vocab_size, 512,
                                                 tokenizer.special_ids))
        loop.init_weights(model)
        model.fast = True
        return model

    muon, adamw = loop.optimizer_for(fresh(), config)
    assert type(muon) is loop.Muon and type(adamw) is torch.optim.AdamW
    assert all(p.dim() == 2 for group in muon.param_groups for p in group["params"])
    assert sum(len(g["params"]) for g in muon.param_groups) == 2 * 4 + 3 * 2  # q k v o, MLP
    whole = fresh()
    log = loop.train(whole, rows, config, tmp_path / "whole")
    assert log[-1]["loss"] < 0.9 * log[0]["loss"]  # (12 steps over 21 different rows)

    class Stopped(Exception):
        pass

    def stop_at_six(step: int) -> None:
        if step == 6:
            raise Stopped

    with pytest.raises(Stopped):
        loop.train(fresh(), rows, config, tmp_path / "stopped", after_save=stop_at_six)
    resumed = fresh()
    loop.train(resumed, rows, config, tmp_path / "stopped", resume=True)
    for name, weight in whole.state_dict().items():
        assert torch.equal(weight, resumed.state_dict()[name]), name

    # a state saved before Muon existed (one "optimizer", no "optimizer" setting) resumes too
    adamw = dataclasses.replace(config, optimizer="adamw")
    whole = fresh()
    loop.train(whole, rows, adamw, tmp_path / "adamw")
    with pytest.raises(Stopped):
        loop.train(fresh(), rows, adamw, tmp_path / "old", after_save=stop_at_six)
    state = torch.load(tmp_path / "old" / loop.STATE, weights_only=False)
    (state["optimizer"],) = state.pop("optimizers")
    del state["config"]["optimizer"]
    torch.save(state, tmp_path / "old" / loop.STATE)
    resumed = fresh()
    loop.train(resumed, rows, adamw, tmp_path / "old", resume=True)
    for name, weight in whole.state_dict().items():
        assert torch.equal(weight, resumed.state_dict()[name]), name


def test_training_lowers_the_loss_and_writes_a_checkpoint_both_runtimes_load(dataset, tmp_path):
    import transformers

    from tracekit.model.checkpoint import load_checkpoint

    out = tmp_path / "model"
    result = train(str(dataset), "-o", str(out), *TINY, "--steps", "40", "--eval-every", "20",
                   "--save-every", "20")
    assert result.returncode == 0, result.stderr[-2000:]
    # stderr is a pipe here, as in a background job's log: a line at each save, no live bar
    assert re.findall(r"step (\d+)/40: loss [\d.]+, \d+ tokens/s, \d+ min left",
                      result.stderr) == ["20", "40"]
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert len(log) == 40 and log[-1]["loss"] < 0.6 * log[0]["loss"]
    assert log[19]["val_loss"] > log[39]["val_loss"] and "state_exact" in log[39]
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors",
                                               "tokenizer.json", "README.md",
                                               "training_curve.png", "training_log.jsonl"}
    assert "tracekit train" in (out / "README.md").read_text()
    ours = load_checkpoint(out)
    reference = transformers.CwmForCausalLM.from_pretrained(out, attn_implementation="eager")
    ids = torch.randint(0, 600, (2, 70))  # past the tiny preset's window of 64
    with torch.no_grad():
        assert (ours(ids).logits - reference.eval()(ids).logits).abs().max() <= 1e-5
    again = train(str(dataset), "-o", str(out), *TINY, "--steps", "40")
    assert again.returncode == 8 and "--resume" in again.stderr
    # as `make model` ends: the run bundled with its card, its weights rounded to bf16
    bundle = [sys.executable, "-m", "tracekit.training", "bundle"]
    bundled = subprocess.run([*bundle, str(out), str(tmp_path / "bundled")],
                             capture_output=True, text=True, timeout=300)
    assert bundled.returncode == 0, bundled.stderr
    assert {p.name for p in (tmp_path / "bundled").iterdir()} >= {
        "config.json", "model.safetensors", "tokenizer.json", "README.md", "training_run.json"}
    assert (tmp_path / "bundled" / "README.md").read_text() == (out / "README.md").read_text()
    shipped = load_checkpoint(tmp_path / "bundled").state_dict()
    for name, weight in ours.state_dict().items():
        assert torch.equal(shipped[name].float(), weight.to(torch.bfloat16).float()), name
    unfinished = subprocess.run([*bundle, str(tmp_path), str(tmp_path / "elsewhere")],
                                capture_output=True, text=True, timeout=300)
    assert unfinished.returncode == 2 and "holds no finished run" in unfinished.stderr


def test_a_run_killed_after_a_save_resumes_to_the_same_weights(dataset, tmp_path):
    """kill -9 right after the state of step 10 is on disk (by progress, not by the clock),
    then --resume: the weights of the uninterrupted run, bit for bit."""
    from safetensors.torch import load_file

    args = [str(dataset), *TINY, "--steps", "20", "--save-every", "5", "--eval-every", "0"]
    assert train(*args, "-o", str(tmp_path / "whole")).returncode == 0
    killed = train(*args, "-o", str(tmp_path / "killed"),
                   env={**os.environ, "TRACEKIT_KILL_AT": "trained:10"})
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    interrupted = train(*args, "-o", str(tmp_path / "killed"), "--resume",
                        env={**os.environ, "TRACEKIT_KILL_AT": "trained:15",
                             "TRACEKIT_KILL_SIGNAL": "INT"})  # Ctrl-C after step 15's save
    assert interrupted.returncode == 130 and "--resume to go on" in interrupted.stderr
    resumed = train(*args, "-o", str(tmp_path / "killed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    again = load_file(tmp_path / "killed" / "model.safetensors")
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)
    other = train(*args, "-o", str(tmp_path / "killed"), "--resume", "--seed", "1")
    assert other.returncode == 8 and "other datasets or options" in other.stderr


def test_init_starts_from_a_checkpoint_with_its_tokenizer_and_shape(dataset, tmp_path):
    """--init: the new run's first loss is the trained model's, not a random one's; at a
    vanishing learning rate its weights stay the checkpoint's (Muon under bf16 autocast here,
    as `make model`'s stage 2 trains); its tokenizer is the same file; the card names the
    optimizer and the autocast."""
    from safetensors.torch import load_file

    args = [str(dataset), *TINY, "--eval-every", "0", "--save-every", "10"]
    assert train(*args, "--steps", "30", "-o", str(tmp_path / "first")).returncode == 0
    first_log = [json.loads(x) for x in (tmp_path / "first" / "training_log.jsonl").open()]
    tuned = train(*args, "--steps", "3", "--lr", "1e-12", "--warmup", "1", "--init",
                  str(tmp_path / "first"), "-o", str(tmp_path / "tuned"), "--optimizer", "muon",
                  "--bf16")
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    log = [json.loads(x) for x in (tmp_path / "tuned" / "training_log.jsonl").open()]
    assert log[0]["loss"] < 0.8 * first_log[0]["loss"]
    assert abs(log[0]["loss"] - first_log[-1]["loss"]) < 0.25 * first_log[-1]["loss"]
    before = load_file(tmp_path / "first" / "model.safetensors")
    after = load_file(tmp_path / "tuned" / "model.safetensors")
    assert all((before[k] - after[k]).abs().max() < 1e-6 for k in before)
    assert ((tmp_path / "tuned" / "tokenizer.json").read_bytes()
            == (tmp_path / "first" / "tokenizer.json").read_bytes())
    card = (tmp_path / "tuned" / "README.md").read_text()
    assert "from the weights of" in card and "Muon on the attention and MLP matrices" in card
    assert "under bfloat16 autocast" in card
    first_card = (tmp_path / "first" / "README.md").read_text()
    assert "AdamW lr" in first_card and "float32" in first_card
    shaped = train(*args, "--set", "num_hidden_layers=3", "--init", str(tmp_path / "first"),
                   "-o", str(tmp_path / "other"))
    assert shaped.returncode == 2 and "--init keeps" in shaped.stderr
    # a longer --seq-len lengthens the context: the config and the card say so
    longer = train(*args, "--steps", "2", "--seq-len", "1024", "--init",
                   str(tmp_path / "first"), "-o", str(tmp_path / "longer"))
    assert longer.returncode == 0, longer.stderr[-2000:]
    config = json.loads((tmp_path / "longer" / "config.json").read_text())
    assert config["max_position_embeddings"] == 1024
    assert "context 1024 tokens" in (tmp_path / "longer" / "README.md").read_text()


def test_two_processes_train_as_one_with_the_same_global_batch(dataset, tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes half of every batch; the losses are
    those of one process (to float rounding: the two halves are summed in another order)."""
    args = [str(dataset), *TINY, "--steps", "6", "--eval-every", "0", "--save-every", "6"]
    assert train(*args, "-o", str(tmp_path / "one")).returncode == 0
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "-m", "tracekit.cli", "train", *args, "-o", str(tmp_path / "two")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    # torchrun prints each rank's output, then its own summary: keep the start (the failing
    # rank's traceback) as well as the end.
    assert two.returncode == 0, two.stderr[:6000] + "\n...\n" + two.stderr[-3000:]

    def losses(name):
        lines = (tmp_path / name / "training_log.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines]

    assert len(losses("two")) == 6
    assert losses("two") == pytest.approx(losses("one"), rel=1e-4)


def test_no_training_program_may_equal_a_test_program(tmp_path):
    """Function bodies compared after renaming: a CRUXEval program in the training data, under
    other names, is found, and `tracekit train` leaves it out (here: nothing is left)."""
    crux = next(sources.cruxeval())
    code = crux.source.split("\ndef main")[0].replace("def f(", "def renamed(")
    assert function_shapes(code)["renamed"] == function_shapes(crux.source)["f"]
    assert leaks([("mine", code)], [("cruxeval/sample_0", crux.source)]) == [
        "mine ~ cruxeval/sample_0"]
    assert leaks([("mine", "def g(x):\n    return x * 3\n")], [("t", crux.source)]) == []
    # Nested in another function (with a docstring, under other names again), still found.
    nested = "def outer(items):\n    \"\"\"doc\"\"\"\n" + "".join(
        "    " + line + "\n" for line in code.replace("nums", "xs").splitlines()) + (
        "    return renamed(items)\n")
    assert function_shapes(nested)["renamed"] == function_shapes(crux.source)["f"]
    assert leaks([("nested", nested)], [("c", crux.source)]) == ["nested ~ c"]
    # An exception's alias is a local name too.
    caught = "def f(s):\n    try:\n        return int(s)\n    except ValueError as {}:\n" \
             "        return str({})\n"
    assert function_shapes(caught.format("err", "err")) == \
        function_shapes(caught.format("problem", "problem"))
    assert function_shapes(caught.format("err", "err")) != \
        function_shapes(caught.format("err", "s"))
    rows = tmp_path / "rows.jsonl"
    body = "def main():  # << START_OF_TRACE\n    return renamed([1, 1, 3, 1, 3, 1])\n"
    rows.write_text(json.dumps({"id": "leak", "code": code + "\n" + body, "call": "main()"}) +
                    "\n")
    build(sources.jsonl(rows), tmp_path / "ds", BuildOptions(split=(1, 0, 0)), workers=1)
    refused = train(str(tmp_path / "ds"), "-o", str(tmp_path / "m"), *TINY, "--steps", "2")
    assert refused.returncode == 8 and "once 1 equal to held-out test programs are dropped" \
        in refused.stderr


def test_the_bundled_model_is_small_bf16_and_equal_in_both_runtimes():
    """model/bundled: at most 30 MB of bf16 safetensors; `bundled` resolves to it; our runtime
    (fp32 on the CPU) and transformers give the same logits on a real trace."""
    import transformers

    from tracekit.format.tokenizer import load_tokenizer
    from tracekit.model.backends import load_backend
    from tracekit.model.checkpoint import BUNDLED

    assert sum(p.stat().st_size for p in BUNDLED.iterdir()) <= 30 << 20
    assert json.loads((BUNDLED / "config.json").read_text())["dtype"] == "bfloat16"
    ours = load_backend("bundled").model
    assert next(ours.parameters()).dtype == torch.float32
    reference = transformers.CwmForCausalLM.from_pretrained(
        BUNDLED, attn_implementation="eager", dtype=torch.float32).eval()
    source = (ROOT / "data" / "programs" / "bubble_sort.py").read_text()
    trace = Trace.from_dict(trace_source(source, call=call_from_comment(source)))
    ids, _ = trace_ids(load_tokenizer(BUNDLED), trace)
    ids = torch.tensor([ids[:ours.config.max_position_embeddings]])
    with torch.no_grad():
        assert (ours(ids).logits - reference(ids).logits).abs().max() <= 1e-4


def test_val_traces_0_keeps_the_validation_loss_and_missing_validation_is_warned_of(dataset,
                                                                                   tmp_path):
    """--val-traces 0 drops the teacher-forced accuracy only; a --seq-len no validation trace
    fits warns that neither figure is measured (once each), and no empty `step N: {}` line."""
    args = [str(dataset), *TINY, "--steps", "4", "--eval-every", "2", "--save-every", "2"]
    none = train(*args, "--val-traces", "0", "-o", str(tmp_path / "none"))
    assert none.returncode == 0, none.stderr[-2000:]
    log = [json.loads(x) for x in (tmp_path / "none" / "training_log.jsonl").open()]
    validated = [e for e in log if "val_loss" in e]
    assert validated and all(e["val_loss"] is not None and "state_exact" not in e
                             for e in validated)
    assert "warning" not in none.stderr
    # short programs to train on, and a validation split of one loop too long for --seq-len
    build(sources.synthetic(20, seed=3, size=2), tmp_path / "train-only",
          BuildOptions(split=(1, 0, 0)), workers=2)
    (tmp_path / "loop.jsonl").write_text(json.dumps({
        "id": "loop", "code": "def f(n):\n    t = 0\n    for i in range(n):\n        t += i\n"
                              "    return t\n", "call": "f(300)"}) + "\n")
    build(sources.jsonl(tmp_path / "loop.jsonl"), tmp_path / "too-long",
          BuildOptions(split=(0, 1, 0)), workers=1)
    args = [str(tmp_path / "train-only"), str(tmp_path / "too-long"), *TINY, "--steps", "4",
            "--eval-every", "2", "--save-every", "2"]
    unfit = train(*args, "-o", str(tmp_path / "unfit"))
    assert unfit.returncode == 0, unfit.stderr[-2000:]
    warned = [x for x in unfit.stderr.splitlines() if x.startswith("warning:")]
    assert warned == ["warning: no validation trace fits --seq-len 512: no validation loss is "
                      "measured", "warning: no validation trace fits --seq-len 512: no "
                      "teacher-forced accuracy is measured"]
    assert "{}" not in unfit.stderr


def test_the_real_code_trained_on_is_not_the_real_code_evaluated_on():
    """`make model`'s real code: none of its projects is a project of the real-code evaluation
    set; the standard library's examples come from modules that run alone (none that runs
    commands or draws random numbers); the licences table names every project's licence."""
    from tracekit.evals.realworld import PROJECTS as EVALUATED
    from tracekit.training import real_code

    trained = {name.lower() for name in {**real_code.TESTED, **real_code.DOCTESTED}}
    assert not trained & {name.lower() for name in EVALUATED}
    modules = real_code.stdlib_modules_with_examples()
    assert {"fractions", "statistics", "difflib"} <= set(modules)
    assert not set(modules) & real_code.STDLIB_LEFT_OUT
    assert not [m for m in modules if m.split(".")[0] in real_code.STDLIB_SKIPPED]
    table = real_code.licences_table()
    for name, (version, licence) in {**real_code.TESTED, **real_code.DOCTESTED}.items():
        assert f"| {name} | {version} | {licence} |" in table


def test_a_download_that_fails_is_one_line_naming_the_project(tmp_path):
    """`make model` with no route to the package index: the spec printer exits 1 with one
    line naming the first project and the fix (and prints no specs for `make` to build)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("PIP_")}
    env |= {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0",  # refused
            "PIP_TIMEOUT": "1", "PIP_NO_CACHE_DIR": "1", "PIP_CONFIG_FILE": os.devnull}
    done = subprocess.run([sys.executable, "-m", "tracekit.training.real_code", "--work",
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: pip could not download cachetools==5.3.3 (")
    assert line.endswith(f"or unpack its sdist into {tmp_path / 'cachetools-5.3.3'}")
