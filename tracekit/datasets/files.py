"""A built dataset's directory: the lock a build holds on it, the check of its Parquet shards
against its manifest (the manifest lists each shard's files and their row counts), and
reading its rows back (`load_rows`).

The lock is `flock` on `.build.lock` in the directory (pyarrow and pandas skip names that start
with a dot): the kernel releases it when its process ends, however it ends, so the lock of a
killed build is free at once and the next build takes it; the file holds the pid of the build
that has it, for the message the second build prints."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

LOCK = ".build.lock"
MANIFEST = "manifest.json"
SPLITS = ("train", "validation", "test")


class BuildError(Exception):
    """A dataset that cannot be built or read: a directory in use, files that disagree with
    the manifest, and the build's own failures; the message says why and what to do."""


class BuildLock:
    """Hold `out`'s build lock while the build runs (`with BuildLock(out):`), creating `out`."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.fd: int | None = None

    def __enter__(self) -> BuildLock:
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BuildError(f"{self.out} is being built by another tracekit (pid "
                                    f"{holder}): wait for it to end, or build into another "
                                    "directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # (closing releases the lock)
            self.fd = None


def shard_problems(directory: Path, manifest: dict, finished: bool = True) -> list[str]:
    """What is wrong with the shards of `directory` against `manifest`: a listed file that is
    missing, cannot be read (truncated) or holds another number of rows than listed, and, in
    a `finished` build, a shard file the manifest does not list (a killed build may leave the
    files of a shard it had not recorded yet). Empty: they agree."""
    import pyarrow.parquet as pq

    directory = Path(directory)
    problems, listed = [], set()
    for files in manifest.get("shards", {}).values():
        for name, count in files.items():
            listed.add(name)
            path = directory / name
            if not path.is_file():
                problems.append(f"{name} is missing")
                continue
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except (OSError, ValueError) as exc:  # Arrow's errors derive from these
                problems.append(f"{name} cannot be read ({str(exc).split('. ')[0][:120]})")
                continue
            if rows != count:
                problems.append(f"{name} holds {rows} rows, the manifest {count}")
    for path in sorted(directory.glob("*-*.parquet")) if finished else ():
        if path.name not in listed:
            problems.append(f"{path.name} is not in the manifest (written by another build?)")
    return problems


def check_shards(directory: Path, manifest: dict, fix: str, finished: bool = True) -> None:
    """Raise BuildError naming the first problem (and how many more), and `fix`."""
    problems = shard_problems(directory, manifest, finished)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise BuildError(f"{directory}: its files disagree with its manifest: "
                                f"{problems[0]}{more}: {fix}")


def load_rows(directory: str | Path, split: str | None = None,
              columns: list[str] | None = None) -> list[dict]:
    """The rows of a built dataset (all splits, or one), in shard order."""
    import pyarrow.parquet as pq

    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise BuildError(f"{directory} is not a tracekit dataset (no {MANIFEST}): build one "
                         "with `tracekit dataset build SOURCES -o DIR`")
    if split is not None and split not in SPLITS:
        raise BuildError(f"no split {split!r}: choose one of {', '.join(SPLITS)}")
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except ValueError:
        raise BuildError(f"{directory / MANIFEST}: not valid JSON: build the dataset again"
                         ) from None
    check_shards(directory, manifest, "build the dataset again",
                 finished=(directory / "stats.json").exists())
    names = sorted(directory.glob(f"{split or '*'}-*.parquet"),
                   key=lambda p: (p.stem.rsplit("-", 1)[1], SPLITS.index(p.stem.rsplit("-", 1)[0])))
    rows: list[dict] = []
    for path in names:
        try:
            rows += pq.read_table(path, columns=columns).to_pylist()
        except (OSError, ValueError, KeyError) as exc:  # Arrow's errors derive from these
            raise BuildError(f"{path}: cannot read it ({str(exc).split('. ')[0][:200]}): "
                             "build the dataset again") from None
    return rows
