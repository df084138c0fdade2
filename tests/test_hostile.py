"""Hostile programs: each ends with the right status, within its limits, and the host stays healthy."""

from __future__ import annotations

import json
import os
import socket
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import needs_bwrap
from tracekit.execution.interpreters import find_python
from tracekit.execution.sandbox import Limits, TraceOptions, bwrap_problem, run_trace
from tracekit.tracer.constants import MARKER, REPORT_GRACE

# Wall-clock bounds here only tell "ended" from "hung": each bounded program never ends by
# itself, so any finite bound catches a broken deadline, and NO_HANG seconds of slack keep a
# slow or loaded machine (one core, busy neighbours) from failing a correct sandbox.
NO_HANG = 30


def trace(body: str, **kwargs):
    """Trace `f` defined by `body` (marked here unless it is already), timing the whole run."""
    source = textwrap.dedent(body)
    if MARKER not in source:
        lines = source.split("\n")
        i = next(i for i, line in enumerate(lines) if line.startswith("def f("))
        lines[i] += MARKER
        source = "\n".join(lines)
    start = time.monotonic()
    result = run_trace(source, options=TraceOptions(**kwargs))
    return result, time.monotonic() - start


def sandboxed_processes(wait: float = 10.0) -> list[int]:
    """PIDs of this test run's processes still running the tracer (inside or outside
    bubblewrap), after giving SIGKILLs already sent up to `wait` seconds to land (it returns as
    soon as none is left, so the generous wait costs nothing when the kill worked)."""
    deadline = time.monotonic() + wait
    while True:
        pids = _tracer_processes()
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def _become_subreaper() -> None:
    """Orphans of this process's descendants are reparented to it (not to init), so a child
    that escaped its sandbox is still found among this test run's descendants, and another
    tracekit running beside the suite is never counted."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


_become_subreaper()


def _tracer_processes() -> list[int]:
    parents, running = {}, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(status.split("\nPPid:\t", 1)[1].split("\n", 1)[0])
        if b"from tracer.worker import main" in cmdline and "\nState:\tZ" not in status:
            running.append(pid)
    return [pid for pid in running if _descends_from(pid, os.getpid(), parents)]


def _descends_from(pid: int, ancestor: int, parents: dict[int, int]) -> bool:
    while pid in parents and pid > 1:
        pid = parents[pid]
        if pid == ancestor:
            return True
    return False


def test_infinite_loop_hits_the_frame_cap_and_keeps_frames():
    result, _ = trace("""
        def f():
            n = 0
            while True:
                n += 1
        """, max_frames=500)
    assert result.status == "frame_limit"  # not "timeout": the cap, not the clock, ended it
    assert len(result.frames) == 500


def test_infinite_loop_without_frame_cap_times_out():
    result, seconds = trace("""
        def f():
            while True:
                pass
        """, max_frames=None, limits=Limits(timeout=1.5))
    assert result.status == "timeout"
    assert len(result.frames) > 1000  # what was traced until then is kept
    # no hang: the child may take REPORT_GRACE more seconds to write the hundreds of thousands
    # of frames, and the host parses them. A generous bound on purpose (a loaded or slow machine
    # must not fail it): a broken deadline never ends at all, which any finite bound catches.
    assert seconds < 1.5 + 1 + REPORT_GRACE + 60


def test_busy_generator_times_out_with_its_frames():
    result, seconds = trace("""
        def spin():
            while True: pass
            yield 1

        def f():  # << START_OF_TRACE
            g = spin()
            return next(g)
        """, limits=Limits(timeout=1.5))
    assert result.status == "timeout"
    assert [f.event for f in result.frames][:3] == ["call", "line", "line"]
    assert seconds < 1.5 + NO_HANG  # the loop never ends by itself


def test_c_loop_holding_the_gil_is_killed_at_the_deadline():
    result, seconds = trace("""
        import itertools

        def f():  # << START_OF_TRACE
            return sum(itertools.count())
        """, limits=Limits(timeout=1.5))
    assert result.status == "timeout"
    assert seconds < 1.5 + NO_HANG  # sum(itertools.count()) never ends by itself


def test_one_huge_allocation_is_a_memory_limit():
    result, _ = trace("""
        def f():
            xs = [0] * 10 ** 10
            return len(xs)
        """, limits=Limits(memory_mb=512))
    assert result.status == "memory_limit"
    assert result.frames[-1].event == "return"


def test_growing_memory_is_a_memory_limit():
    result, _ = trace("""
        def f():
            chunks = []
            while True:
                chunks.append(bytearray(10 ** 7))
        """, max_frames=None, limits=Limits(memory_mb=384, timeout=20))
    assert result.status == "memory_limit"  # not "timeout": the limit, not the clock, ended it


def test_deep_recursion_stops_cleanly_with_its_frames():
    result, _ = trace("""
        def f(n=0):
            return f(n + 1)
        """, max_frames=None)
    assert result.status == "recursion_limit"
    assert "RecursionError" in result.error
    assert len(result.frames) > 1500
    assert not result.complete


@pytest.mark.parametrize("sandbox, children", [("bwrap", 200), ("none", 50)])
def test_forked_children_do_not_outlive_the_sandbox(sandbox, children):
    """Each mode's own defence, checked by the same count of this run's tracer processes:
    - none (rlimits): killing the child's process group ends them (kill only the child, and
      this case fails);
    - bwrap: the group kill reaches bwrap alone (the traced program runs in its own session
      inside a PID namespace); what ends the children is --die-with-parent, which takes the
      namespace's init and with it every process in the namespace when bwrap dies (drop the
      flag, and this case fails). Killing only the child is no bug here, so this case cannot
      and need not catch it: the none case does, on every machine."""
    if sandbox == "bwrap":
        needs_bwrap()
    result, _ = trace(f"""
        import os, time

        def f():  # << START_OF_TRACE
            for _ in range({children}):
                if os.fork() == 0:
                    time.sleep(1000)
                    os._exit(0)
            return {children}
        """, max_frames=None, sandbox=sandbox)
    assert result.status == "ok", result.error
    assert result.return_value == str(children)
    assert result.sandbox == {"none": "rlimits", "bwrap": "bwrap"}[sandbox]
    assert sandboxed_processes() == []


def test_sys_exit_is_a_complete_trace_with_status_exited():
    result, _ = trace("""
        import sys

        def f():  # << START_OF_TRACE
            sys.exit(3)
        """)
    assert result.status == "exited"
    assert result.error == "SystemExit: 3"
    assert [f.event for f in result.frames] == ["call", "line", "exception", "return"]
    assert result.complete


def test_os_exit_is_a_crash():
    result, _ = trace("""
        import os

        def f():  # << START_OF_TRACE
            os._exit(0)
        """)
    assert result.status == "crashed"
    assert "exited with code 0" in result.error


def test_killing_itself_is_a_crash():
    result, _ = trace("""
        import os

        def f():  # << START_OF_TRACE
            os.kill(os.getpid(), 9)
        """)
    assert result.status == "crashed"
    assert "SIGKILL" in result.error


def test_gigabytes_of_stdout_hit_the_output_limit():
    limits = Limits(max_output_bytes=4 << 20, capture_bytes=1000)
    result, _ = trace("""
        import sys

        def f():  # << START_OF_TRACE
            while True:
                sys.stdout.write("x" * 65536)
        """, max_frames=None, limits=limits)
    assert result.status == "output_limit"
    assert result.stdout.startswith("x" * 1000)
    assert len(result.stdout) < 1100  # the host kept only what it may capture
    # the status proves the output limit ended it: otherwise the 10 s deadline would, "timeout"


def test_repr_that_raises_becomes_a_placeholder():
    result, _ = trace("""
        class Bad:
            def __repr__(self):
                raise SystemExit("not from a repr")

        def f():  # << START_OF_TRACE
            b = Bad()
            return 1
        """)
    assert result.status == "ok"
    assert result.frames[-2].locals["b"] == "<tracekit: repr raised SystemExit>"  # as documented


def test_repr_that_sleeps_forever_times_out_per_value():
    result, _ = trace("""
        import time

        class Sleepy:
            def __repr__(self):
                time.sleep(10 ** 6)

        def f():  # << START_OF_TRACE
            s = Sleepy()
            n = 2
            return n
        """, repr_timeout=0.3)
    assert result.status == "ok"
    states = [f.locals for f in result.frames if f.locals is not None]
    assert states[2]["s"] == "<tracekit: repr timed out>"  # the text README and docs give
    assert states[3]["s"] == ".."  # the placeholder is the value; unchanged values stay ".."
    # "ok" proves each repr was cut off: one repr that hung would end the run as "timeout"


def test_repr_that_catches_the_timeout_still_ends():
    result, _ = trace("""
        class Stubborn:
            def __repr__(self):
                while True:
                    try:
                        while True:
                            pass
                    except BaseException:
                        pass

        def f():  # << START_OF_TRACE
            s = Stubborn()
            return 1
        """, repr_timeout=0.2, limits=Limits(timeout=2))
    assert result.status == "timeout"
    assert [f.event for f in result.frames][:2] == ["call", "line"]


def test_repr_of_100_megabytes_becomes_a_placeholder():
    result, _ = trace("""
        class Huge:
            def __repr__(self):
                return "x" * 100_000_000

        def f():  # << START_OF_TRACE
            h = Huge()
            return 1
        """)
    assert result.status == "ok"
    assert result.frames[-2].locals["h"] == "<tracekit: repr too large: 100000000 chars>"


def test_network_is_unreachable_inside_the_sandbox():
    needs_bwrap()
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        result, _ = trace(f"""
            import socket

            def f():  # << START_OF_TRACE
                try:
                    socket.create_connection(("127.0.0.1", {port}), timeout=2)
                except OSError as exc:
                    return type(exc).__name__
                return "connected"
            """)
        assert result.status == "ok", result.error
        assert result.return_value != "'connected'"
        with pytest.raises(socket.timeout):
            # a connection would have been made during the trace, before this: it would wait
            # in the backlog and accept at once; 0.5 s is no race
            server.accept()  # nobody came through
    finally:
        server.close()


def test_filesystem_is_read_only_except_a_private_tmp():
    needs_bwrap()
    outside = [Path(__file__).parent / "written_by_sandbox.txt",
               Path("/usr/local/written_by_tracekit_sandbox.txt")]
    result, _ = trace(f"""
        import os

        def f():  # << START_OF_TRACE
            results = []
            for path in {[str(p) for p in outside]!r} + ["/tmp/inside.txt"]:
                try:
                    with open(path, "w") as fh:
                        fh.write("x")
                    results.append("written")
                except OSError:
                    results.append("refused")
            results.append(os.listdir({str(Path.home())!r}))
            return results
        """)
    assert result.status == "ok", result.error
    home = Path.home()
    # Only the directories leading to the interpreter come back into the hidden home.
    interpreter_dirs = sorted({Path(p).relative_to(home).parts[0]
                               for p in find_python(None).prefixes if Path(p).is_relative_to(home)})
    assert result.return_value == f"['refused', 'refused', 'written', {interpreter_dirs}]"
    assert not any(path.exists() for path in outside)
    assert not Path("/tmp/inside.txt").exists()  # the sandbox's /tmp is its own
    assert any(Path.home().iterdir()), "the host home is not empty, yet the sandbox saw it empty"


READER = """\
import os

HERE = os.path.dirname(__file__)


def read():  # << START_OF_TRACE
    seen = [os.getcwd() == HERE]
    for path in (os.path.join(HERE, "sample.txt"), "sample.txt", OTHER):
        try:
            with open(path) as fh:
                seen.append(fh.read())
        except OSError as exc:
            seen.append(type(exc).__name__)
    for path in ("written.txt", "sample.txt"):
        try:
            with open(path, "w") as fh:
                fh.write("x")
            seen.append("written")
        except OSError:
            seen.append("refused")
    return seen
"""


@pytest.mark.parametrize("bind", [False, True])
def test_a_program_reads_the_files_beside_it_and_writes_none_of_them(tmp_path, bind):
    """`tracekit trace DIR/prog.py` from elsewhere: the program runs in DIR with `__file__`
    its real path, reads the file beside it (by either path) but no other of /tmp unless
    --bind names it, and cannot write into DIR; DIR is as it was."""
    from click.testing import CliRunner

    from tracekit.cli import main

    needs_bwrap()
    project, other = tmp_path / "project", tmp_path / "other"
    project.mkdir()
    other.mkdir()
    (other / "secret.txt").write_text("other's")
    (project / "sample.txt").write_text("beside")
    (project / "reader.py").write_text(READER.replace("OTHER", repr(str(other / "secret.txt"))))
    before = {p.name: p.read_bytes() for p in project.iterdir()}
    args = ["trace", str(project / "reader.py"), "--format", "json", "--sandbox", "bwrap"]
    result = CliRunner().invoke(main, args + (["--bind", str(other)] if bind else []),
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    trace = json.loads(result.stdout)
    third = "other's" if bind else "FileNotFoundError"
    expected = repr([True, "beside", "beside", third, "refused", "refused"])
    assert trace["return_value"] == expected
    # a dataset build runs it the same way, in a warm sandbox (a fork per program)
    from tracekit.datasets.files import load_rows

    args = ["dataset", "build", str(project), "-o", str(tmp_path / "ds"), "--sandbox", "bwrap"]
    built = CliRunner().invoke(main, args + (["--bind", str(other)] if bind else []),
                               catch_exceptions=False)
    assert built.exit_code == 0, built.output
    assert [row["return_value"] for row in load_rows(tmp_path / "ds")] == [expected]
    assert {p.name: p.read_bytes() for p in project.iterdir()} == before


def test_a_program_directly_in_tmp_reads_beside_it_and_its_writes_stay_in_the_sandbox():
    """/tmp is the sandbox's own scratch tmpfs, so a program whose directory is /tmp itself
    sees /tmp's entries bound read-only over it: it reads the file beside it, its file there
    cannot be overwritten, and a new file lives in the scratch only."""
    from click.testing import CliRunner

    from tracekit.cli import main

    needs_bwrap()
    name = f"tracekit-test-{os.getpid()}"
    program, data, made = (Path("/tmp") / f"{name}{end}" for end in (".py", ".txt", ".out"))
    program.write_text(f"def f():  # << START_OF_TRACE\n"
                       f"    open({made.name!r}, 'w').write('new')\n"
                       f"    try:\n        open(__file__, 'a').write('#')\n"
                       f"    except OSError:\n        kept = True\n"
                       f"    return open({data.name!r}).read(), open({made.name!r}).read(), kept\n")
    data.write_text("beside")
    try:
        result = CliRunner().invoke(main, ["trace", str(program), "--format", "json",
                                           "--sandbox", "bwrap"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["return_value"] == repr(("beside", "new", True))
        assert not made.exists() and program.read_text().endswith("kept\n")
    finally:
        for path in (program, data, made):
            path.unlink(missing_ok=True)


def test_syntax_error_is_reported_with_its_line():
    result, _ = trace("""
        def f():
            return (1
        """)
    assert result.status == "syntax_error"
    assert "line 2" in result.error or "line 3" in result.error


def test_missing_entry_function():
    result = run_trace("def g():\n    return 1\n")
    assert result.status == "no_entry"
    assert "--entry" in result.error
    result = run_trace("def g():\n    return 1\n", entry="nothere")
    assert result.status == "no_entry"
    assert "nothere" in result.error


def test_call_that_never_enters_the_entry():
    result = run_trace("def f(x):  # << START_OF_TRACE\n    return x\n", call="f()")
    assert result.status == "no_entry"
    assert "TypeError" in result.error and "--call" in result.error


def test_module_level_error_is_a_setup_error():
    result = run_trace("raise ValueError('boom')\n\ndef f():  # << START_OF_TRACE\n    return 1\n")
    assert result.status == "setup_error"
    assert "ValueError: boom" in result.error


def test_program_that_switches_tracing_off():
    result, _ = trace("""
        import sys

        def f():  # << START_OF_TRACE
            sys.settrace(None)
            x = 1
            return x
        """)
    assert result.status == "crashed"
    assert "sys.settrace" in result.error


def test_host_is_healthy_after_the_hostile_programs():
    """On its own (it does not lean on the tests before it): programs that leave children
    behind, spin, and exhaust memory, in every sandbox mode, then an ordinary one: it traces,
    and nothing any of them started is still running."""
    leaver = """
        import os, time

        def f():  # << START_OF_TRACE
            for _ in range(20):
                if os.fork() == 0:
                    time.sleep(1000)
                    os._exit(0)
            return 1
        """
    modes = ["none"] + ([] if bwrap_problem() else ["auto"])
    for sandbox in modes:
        assert trace(leaver, max_frames=None, sandbox=sandbox)[0].status == "ok"
        spin = trace("def f():\n    while True:\n        pass\n", max_frames=None,
                     limits=Limits(timeout=1), sandbox=sandbox)[0]
        assert spin.status == "timeout"
        hog = trace("def f():\n    return len(bytearray(8 << 30))\n",
                    limits=Limits(memory_mb=512), sandbox=sandbox)[0]
        assert hog.status == "memory_limit"
    result = run_trace("def f():  # << START_OF_TRACE\n    return 41 + 1\n")
    assert result.status == "ok" and result.return_value == "42"
    assert sandboxed_processes() == []
