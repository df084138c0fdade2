"""Pinned source distributions from PyPI, unpacked into checkouts for the `tests:` and
`doctest:` sources: the real-code evaluation set's projects (`evals/realworld.py`) and the
bundled model's training projects (`tracekit/training/real_code.py`) are fetched here.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

# name -> (version, licence) of a project, pinned
Projects = dict[str, tuple[str, str]]


class DownloadError(Exception):
    """A pinned sdist could not be downloaded (its message is one line: the project, the cause
    and the fix)."""


def download(projects: Projects, work: Path) -> list[Path]:
    """Each project's sdist downloaded (pip, from the package index; nothing is built or
    installed) and unpacked under `work` as `NAME-VERSION/`, once: the checkouts, in order.
    Raises DownloadError when pip cannot fetch one (no route to the package index)."""
    work.mkdir(parents=True, exist_ok=True)
    checkouts = []
    for name, (version, _) in projects.items():
        checkout = work / f"{name}-{version}"
        if not checkout.is_dir():
            fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet",
                                      "--no-deps", "--no-binary", ":all:", f"{name}=={version}",
                                      "-d", str(work)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
            if fetched.returncode != 0:
                said = (fetched.stderr.strip().splitlines() or ["no message"])[-1]
                raise DownloadError(f"pip could not download {name}=={version} ({said}): "
                                    "reach the package index (PyPI or pip's --index-url), "
                                    f"or unpack its sdist into {work / f'{name}-{version}'}")
            archive = next(work.glob(f"{name.replace('-', '[-_]')}-{version}.tar.gz"))
            with tarfile.open(archive) as tar:
                tar.extractall(work, filter="data")
            unpacked = work / archive.name.removesuffix(".tar.gz")
            if not checkout.is_dir():  # an sdist named with "_" where the project has "-"
                unpacked.rename(checkout)
        checkouts.append(checkout)
    return checkouts
