"""Dataset builds: Parquet that `datasets` loads, stats and card, and a build killed with
SIGKILL at several points that resumes to exactly the rows of an uninterrupted build."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.conftest import needs_bwrap, skip_or_fail
from tracekit.datasets.build import BuildError, BuildOptions, build
from tracekit.datasets.files import load_rows
from tracekit.execution.sandbox import Limits, TraceOptions
from tracekit.programs import sources

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "data" / "programs"


def rows_of(directory: Path) -> list[dict]:
    files = sorted(str(p) for p in directory.glob("*-*.parquet"))
    rows = ds.dataset(files, format="parquet").to_table().to_pylist()
    return sorted(rows, key=lambda row: row["id"])


def test_a_build_loads_with_datasets_and_describes_itself(tmp_path):
    import datasets

    programs = list(sources.python_files([PROGRAMS])) + list(sources.synthetic(10, seed=4))
    programs.append(programs[0])  # an exact duplicate: dropped
    stats = build(programs, tmp_path / "out", BuildOptions(shard_size=6, split=(1, 1, 1)),
                  workers=2)
    assert stats["programs"] == 24 and stats["rows"] == 24
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"))
    assert sum(len(part) for part in loaded.values()) == 24 and set(loaded) <= {
        "train", "validation", "test"}
    row = next(r for part in loaded.values() for r in part if r["id"] == "bubble_sort")
    assert row["status"] == "ok" and row["n_frames"] == len(row["frames"]) > 5
    assert row["frames"][0]["event"] == "call" and json.loads(row["frames"][0]["locals"])
    assert row["cwm"].startswith("<|begin_of_text|><|trace_context_start|>")
    assert row["n_tokens"] > row["n_frames"] and row["return_value"] == "[1, 2, 3]"
    on_disk = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert on_disk["statuses"] == stats["statuses"] and sum(stats["statuses"].values()) == 24
    assert "| ok |" in (tmp_path / "out" / "README.md").read_text()
    with pytest.raises(BuildError, match="--resume"):
        build(programs, tmp_path / "out")
    with pytest.raises(BuildError, match="other programs or options"):
        build(programs[:5], tmp_path / "out", resume=True)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(BuildError, match="is a file"):
        build(programs[:1], tmp_path / "a-file")


@pytest.mark.parametrize("split", [(1, 0, 0), (0, 1, 1), (98, 1, 1)])
def test_a_build_loads_by_its_card_and_by_format_for_any_split(tmp_path, split):
    """`load_dataset(DIR)` reads the card's configs, which name only splits with files."""
    import datasets

    build(list(sources.synthetic(6, seed=1)), tmp_path, BuildOptions(split=split), workers=1)
    by_card = datasets.load_dataset(str(tmp_path))
    by_format = datasets.load_dataset("parquet", data_dir=str(tmp_path))
    assert sum(map(len, by_card.values())) == sum(map(len, by_format.values())) == 6
    # README's ways with pandas (the directory itself holds README.md, which is no Parquet)
    import glob

    import pandas as pd

    by_glob = pd.concat([pd.read_parquet(sorted(glob.glob(f"{tmp_path}/{name}-*.parquet")))
                         for name in by_card])
    assert sorted(by_glob["id"]) == sorted(r["id"] for r in load_rows(tmp_path)) == sorted(
        r["id"] for part in by_card.values() for r in part)
    assert set(by_card) == {name for name, weight in zip(("train", "validation", "test"),
                                                         split) if weight} & set(by_format)


def test_failed_programs_keep_their_status_or_are_dropped(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in [
        {"id": "loops", "code": "def f():\n    while True:\n        pass", "call": "f()"},
        {"id": "fine", "code": "def g(x):\n    return x", "call": "g(1)"},
        {"id": "raises", "code": "def h():\n    return 1 / 0", "call": "h()"},
    ]) + "\n")
    quick = TraceOptions(limits=Limits(timeout=1.0))
    kept = build(sources.jsonl(source), tmp_path / "all", BuildOptions(quick), workers=2)
    assert kept["statuses"] == {"frame_limit": 1, "ok": 1, "raised": 1} and kept["rows"] == 3
    dropped = build(sources.jsonl(source), tmp_path / "some",
                    BuildOptions(quick, drop_failed=True), workers=2)
    assert dropped["rows"] == 2  # raised is a complete trace; the frame_limit one is not
    assert {r["id"] for r in rows_of(tmp_path / "some")} == {"fine", "raises"}


def test_killed_builds_resume_to_exactly_the_uninterrupted_rows(tmp_path):
    """Five runs each SIGKILLed at a seeded point of the build's progress (after tracing a
    shard, with a shard's file half-written, with its files in place but not in the manifest,
    just after the manifest), and one interrupted by Ctrl-C, resumed each time: the same rows as
    an uninterrupted build. The kills are placed by progress, not by the clock, so every
    machine makes exactly six."""
    command = [sys.executable, "-m", "tracekit.cli", "dataset", "build", str(PROGRAMS),
               "synthetic:200:9", "--shard-size", "10", "--workers", "2"]
    subprocess.run([*command, "-o", str(tmp_path / "whole")], check=True, cwd=ROOT,
                   capture_output=True)
    whole = rows_of(tmp_path / "whole")
    assert len(whole) == 214
    shards = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "whole").glob("train-*"))
    rng = random.Random(0)
    stages = rng.sample(["traced", "half-written", "written", "recorded"], 4) + ["traced"]
    # one kill in each of five shards, in build order (a resumed run skips earlier shards)
    points = [f"half-written:train-{k:05d}" if stage == "half-written" else f"{stage}:{k}"
              for stage, k in zip(stages, sorted(rng.sample(shards[:-1], 5)))]
    killed = tmp_path / "killed"
    for point in points:
        proc = subprocess.run([*command, "-o", str(killed), "--resume"], cwd=ROOT,
                              capture_output=True, env={**os.environ, "TRACEKIT_KILL_AT": point})
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-500:])
        if point.startswith("half-written"):
            assert list(killed.glob("*.tmp")), "the kill left no half-written file"
    # and Ctrl-C (SIGINT to the whole group, the traced programs too) in the last shard
    interrupted = subprocess.run([*command, "-o", str(killed), "--resume"], cwd=ROOT,
                                 capture_output=True, text=True, start_new_session=True,
                                 env={**os.environ, "TRACEKIT_KILL_AT": f"traced:{shards[-1]}",
                                      "TRACEKIT_KILL_SIGNAL": "INT"})
    assert interrupted.returncode == 130, interrupted.stderr[-500:]
    assert interrupted.stderr.splitlines()[-1] == ("interrupted: what was finished is kept: run "
                                                   "the same command with --resume to go on")
    finished = subprocess.run([*command, "-o", str(killed), "--resume"], cwd=ROOT,
                              capture_output=True)
    assert finished.returncode == 0, finished.stderr[-500:]
    assert len(points) == 5  # exactly five kills, each checked above
    assert rows_of(killed) == whole  # every row, compared field by field
    assert not list(killed.glob("*.tmp"))  # half-written files are cleared


def test_check_determinism_drops_traces_that_differ_between_runs(tmp_path):
    source = tmp_path / "chance.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in [
        {"id": "clock", "code": "import time\ndef f():\n    return time.time_ns()",
         "call": "f()"},
        {"id": "steady", "code": "def g(x):\n    return x * 2", "call": "g(4)"},
    ]) + "\n")
    stats = build(sources.jsonl(source), tmp_path / "out", BuildOptions(check_determinism=True),
                  workers=2)
    assert stats["rows"] == 1 and stats["filtered"] == {"nondeterministic": 1}
    assert [r["id"] for r in rows_of(tmp_path / "out")] == ["steady"]
    assert "nondeterministic" in (tmp_path / "out" / "README.md").read_text()


HOSTILE = [
    {"id": "spin", "code": "def f():\n    while True:\n        pass", "call": "f()"},
    {"id": "hog", "code": "def f():\n    return len(bytearray(8 << 30))", "call": "f()"},
    {"id": "vanish", "code": "import os\ndef f():\n    os._exit(0)", "call": "f()"},
    {"id": "leaver", "code": "def f():\n    open('/tmp/left-behind', 'w').write('x')\n"
                             "    return 1", "call": "f()"},
    {"id": "finder", "code": "import os\ndef f():\n    return os.path.exists('/tmp/left-behind')",
     "call": "f()"},
    {"id": "parent_killer", "code": "import os, signal\ndef f():\n"
                                    "    os.kill(os.getppid(), signal.SIGKILL)\n    return 1",
     "call": "f()"},
    {"id": "chatter", "code": "def f():\n    while True:\n        print('x' * 10000)",
     "call": "f()"},
    # a child that outlives its program keeps writing /tmp/late: found whenever it survives
    {"id": "spawner", "code": "import subprocess\ndef f():\n    subprocess.Popen(['sh', '-c', "
                              "'while true; do touch /tmp/late; sleep 0.05; done'], "
                              "start_new_session=True)\n    return 1", "call": "f()"},
    {"id": "late_finder", "code": "import os, time\ndef f():\n    time.sleep(0.5)\n"
                                  "    return os.path.exists('/tmp/late')", "call": "f()"},
]


def test_hostile_programs_get_their_status_and_leave_their_neighbours_alone(tmp_path):
    needs_bwrap()  # without it, a program can signal the builder itself
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text("\n".join(json.dumps(row) for row in HOSTILE) + "\n")
    tracing = TraceOptions(sandbox="bwrap", limits=Limits(timeout=3.0, memory_mb=512),
                           max_frames=5_000)
    options = BuildOptions(tracing, shard_size=4)
    normal = list(sources.python_files([PROGRAMS]))
    mixed = [p for pair in zip(normal, list(sources.jsonl(hostile)) * 2) for p in pair]
    assert {p.id for p in mixed} >= {row["id"] for row in HOSTILE}
    build(normal, tmp_path / "alone", options, workers=2)
    # one worker: every program after another in the same warm sandbox, so a leftover of one
    # always meets the next (with two, which worker got which was chance)
    build(mixed, tmp_path / "mixed", options, workers=1)
    by_id = {row["id"]: row for row in rows_of(tmp_path / "mixed")}
    assert [by_id[r["id"]] for r in rows_of(tmp_path / "alone")] == rows_of(tmp_path / "alone")
    assert by_id["spin"]["status"] == "frame_limit"
    assert by_id["hog"]["status"] == "memory_limit"
    assert by_id["vanish"]["status"] == "crashed"
    assert by_id["finder"]["return_value"] == "False"  # nothing crossed from "leaver"
    assert by_id["late_finder"]["return_value"] == "False"  # "spawner"'s child was killed
    assert by_id["chatter"]["status"] == "output_limit"
    # it kills the warm sandbox's worker, its parent: crashed, and the next gets a new one
    assert by_id["parent_killer"]["status"] == "crashed"


def test_dataset_commands(tmp_path):
    from click.testing import CliRunner

    from tracekit.cli import main

    runner = CliRunner()
    built = runner.invoke(main, ["dataset", "build", str(PROGRAMS / "bubble_sort.py"),
                                 "synthetic:3", "-o", str(tmp_path / "out"), "--workers", "2"])
    assert built.exit_code == 0 and "4 rows from 4 programs" in built.output
    stats = runner.invoke(main, ["dataset", "stats", str(tmp_path / "out")])
    assert json.loads(stats.output)["rows"] == 4
    shown = runner.invoke(main, ["dataset", "show", str(tmp_path / "out"), "--id",
                                 "bubble_sort"])
    assert shown.exit_code == 0 and "bubble_sort([3, 1, 2])" in shown.output
    missing = runner.invoke(main, ["dataset", "show", str(tmp_path / "out"), "--id", "nope"])
    assert missing.exit_code == 8 and "no row with id 'nope'" in missing.output
    bad = runner.invoke(main, ["dataset", "build", "synthetic:x", "-o", str(tmp_path / "b")])
    assert bad.exit_code == 8 and "synthetic:COUNT" in bad.output
    again = runner.invoke(main, ["dataset", "build", "synthetic:3", "-o", str(tmp_path / "out")])
    assert again.exit_code == 8 and "--resume" in again.output


SLOW = "import time\n\ndef f():  # << START_OF_TRACE\n    time.sleep(30)\n    return 1\n"


def test_a_second_build_into_a_directory_in_use_is_refused_and_a_killed_ones_lock_is_free(
        tmp_path):
    """Build A holds the directory (tracing a program that sleeps); build B into it exits 8
    naming A's pid and writes nothing there; A is killed with SIGKILL; a resumed build takes
    the directory over and ends with the rows of one build, as `dataset stats` says."""
    (tmp_path / "slow.py").write_text(SLOW)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tracekit.cli", "dataset", "build"]
    first = subprocess.Popen([*command, str(tmp_path / "slow.py"), "synthetic:5", "-o", str(out),
                              "--timeout", "60"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        lock = out / ".build.lock"
        for _ in range(600):  # the lock holds its pid once taken
            if lock.exists() and lock.read_text().strip() == str(first.pid):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the first build never took the lock")
        before = sorted(p.name for p in out.iterdir())
        second = subprocess.run([*command, "basic:5:8", "-o", str(out)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 8
        assert f"is being built by another tracekit (pid {first.pid})" in second.stderr
        resumed = subprocess.run([*command, "basic:5:8", "-o", str(out), "--resume"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 8 and f"pid {first.pid}" in resumed.stderr
        assert sorted(p.name for p in out.iterdir()) == before
    finally:
        first.kill()
        first.wait()
    (tmp_path / "slow.py").write_text(SLOW.replace("time.sleep(30)", "time.sleep(0)"))
    taken = subprocess.run([*command, str(tmp_path / "slow.py"), "synthetic:5", "-o", str(out),
                            "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert taken.returncode == 0, taken.stderr[-500:]  # the dead build's lock is free
    stats = subprocess.run([*command[:-1], "stats", str(out)], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert stats.returncode == 0 and json.loads(stats.stdout)["rows"] == 6 == len(rows_of(out))


def test_a_damaged_dataset_is_refused_in_one_line_by_resume_stats_show_eval_and_train(
        tmp_path):
    """A shard removed, a shard truncated, a shard another build left: `--resume`, `dataset
    stats`, `dataset show`, `eval` and `train` each end in one line naming the file, exit 8."""
    from click.testing import CliRunner

    from tracekit.cli import main

    runner = CliRunner()
    spec = ["synthetic:40:3", "--shard-size", "10"]
    built = runner.invoke(main, ["dataset", "build", *spec, "-o", str(tmp_path / "ds")])
    assert built.exit_code == 0, built.output
    shards = sorted((tmp_path / "ds").glob("train-*.parquet"))
    assert len(shards) == 4

    def refused(damage: str, *args: str) -> str:
        result = runner.invoke(main, list(args))
        lines = [x for x in result.stderr.splitlines() if x.strip()
                 and not x.startswith(("tracing", "training", "warning"))]
        assert result.exit_code == 8 and len(lines) == 1, (damage, args, result.output)
        assert "Traceback" not in result.output
        return lines[0]

    ds_dir = str(tmp_path / "ds")
    commands = [("dataset", "build", *spec, "-o", ds_dir, "--resume"),
                ("dataset", "stats", ds_dir), ("eval", ds_dir, "--model", "copy", "-o",
                                                str(tmp_path / "ev")),
                ("train", ds_dir, "-o", str(tmp_path / "tr"), "--size", "tiny", "--steps", "1")]
    saved = shards[1].read_bytes()
    shards[1].unlink()
    for command in commands:
        assert f"{shards[1].name} is missing" in refused("removed", *command)
    shards[1].write_bytes(saved[:len(saved) // 2])
    for command in commands:
        assert f"{shards[1].name} cannot be read" in refused("truncated", *command)
    said = refused("truncated", "dataset", "show", ds_dir, "--id", "x")
    assert "cannot read its shards" in said and "build the dataset again" in said
    shards[1].write_bytes(saved)
    (tmp_path / "ds" / "train-00009.parquet").write_bytes(saved)
    for command in commands[1:]:  # (a killed build may leave the files of an unrecorded shard)
        assert "train-00009.parquet is not in the manifest" in refused("extra", *command)
    assert not (tmp_path / "ev").exists() and not (tmp_path / "tr").exists()


def test_a_warm_sandbox_traces_like_a_fresh_one_and_clears_up_between_programs():
    from tracekit.execution.sandbox import WarmSandbox, run_trace

    needs_bwrap()
    rows = {row["id"]: row for row in HOSTILE}
    tracing = TraceOptions(limits=Limits(timeout=3.0, memory_mb=512))
    with WarmSandbox(tracing) as warm:
        for program in sources.python_files([PROGRAMS]):
            ours = warm.trace(program.source, program.call)
            fresh = run_trace(program.source, program.call, None, tracing)
            assert (ours.status, ours.frames, ours.return_value) == (
                fresh.status, fresh.frames, fresh.return_value), program.id
        for first, then in (("leaver", "finder"), ("spawner", "late_finder")):
            assert warm.trace(rows[first]["code"], rows[first]["call"], "f").status == "ok"
            after = warm.trace(rows[then]["code"], rows[then]["call"], "f")
            assert after.return_value == "False", first  # same worker, nothing left over
        killer = rows["parent_killer"]
        assert warm.trace(killer["code"], killer["call"], "f").status == "crashed"
        assert warm.trace("def f():\n    return 2\n", "f()", "f").return_value == "2"


@pytest.mark.ray
def test_a_ray_start_cluster_is_reached_with_its_token_and_without_it_the_error_says_so(
        tmp_path):
    """`ray start --head` on loopback (Ray 2.59+ turns token authentication on): a build that
    connects without RAY_AUTH_MODE=token fails in one line that says to set it; with it, the
    rows are the local engine's."""
    if importlib.util.find_spec("ray") is None:
        skip_or_fail("Ray is not installed (pip install 'tracekit[ray]')")
    import shutil
    import socket
    import tempfile
    import time

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    scratch = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(scratch / "home")
    # a token in ~/.ray/auth_token, as any earlier local ray.init() leaves: `ray start` then
    # turns token authentication on
    (scratch / "home" / ".ray").mkdir(parents=True)
    (scratch / "home" / ".ray" / "auth_token").write_text("0123456789abcdef" * 4)
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head",
                             "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", "2", "--include-dashboard", "false",
                             "--disable-usage-stats", "--temp-dir", str(scratch / "ray")],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and head.poll() is None, "no Ray head"
                time.sleep(0.5)
        build = [sys.executable, "-m", "tracekit.cli", "dataset", "build", str(PROGRAMS),
                 "--engine", "ray", "--address", f"127.0.0.1:{port}", "--workers", "2"]
        without = subprocess.run([*build, "-o", str(tmp_path / "without")], env=env, cwd=ROOT,
                                 capture_output=True, text=True, timeout=300)
        assert without.returncode == 8, without.stderr[-2000:]
        line = without.stderr.strip().splitlines()[-1]
        assert line.startswith(f"dataset: cannot start or reach Ray at 127.0.0.1:{port}: ")
        assert "run with RAY_AUTH_MODE=token" in line
        with_token = subprocess.run([*build, "-o", str(tmp_path / "ray")], cwd=ROOT,
                                    env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True,
                                    text=True, timeout=300)
        assert with_token.returncode == 0, with_token.stderr[-2000:]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)
    local = subprocess.run([*build[:6], "-o", str(tmp_path / "local"), "--workers", "2"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-2000:]
    assert rows_of(tmp_path / "ray") == rows_of(tmp_path / "local") != []


@pytest.mark.ray
def test_the_ray_engine_gives_the_rows_of_the_local_engine(tmp_path):
    """Programs and a project's test files (tests:) in one build, on Ray and locally."""
    if importlib.util.find_spec("ray") is None:
        skip_or_fail("Ray is not installed (pip install 'tracekit[ray]')")
    programs = list(sources.python_files([PROGRAMS])) + list(sources.synthetic(60, seed=3))
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text("".join(json.dumps(row) + "\n" for row in HOSTILE[:3]))
    programs += list(sources.jsonl(hostile))  # a loop, a memory hog, os._exit
    programs += list(sources.from_specs([f"tests:{ROOT / 'tests' / 'fixtures' / 'tinyproj'}"]))
    options = BuildOptions(TraceOptions(limits=Limits(timeout=2.0)), shard_size=25)
    local = build(programs, tmp_path / "local", options, workers=2)
    ray_stats = build(programs, tmp_path / "ray", options, workers=2, engine="ray")
    assert rows_of(tmp_path / "ray") == rows_of(tmp_path / "local")
    assert ray_stats["statuses"] == local["statuses"] and local["statuses"]["ok"] >= 70
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(
        p.name for p in (tmp_path / "local").iterdir())
    with pytest.raises(BuildError, match="cannot reach Ray at 127.0.0.1:9"):
        build(programs[:2], tmp_path / "nowhere", engine="ray", address="127.0.0.1:9")
