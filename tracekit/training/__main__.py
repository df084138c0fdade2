"""`python -m tracekit.training bundle RUN DESTINATION`: a finished run's checkpoint, card and log
as tracekit ships them (what `make model` ends with)."""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = "usage: python -m tracekit.training bundle RUN DESTINATION"


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "bundle":
        print(USAGE, file=sys.stderr)
        return 2
    from tracekit.training.run import RUN_FILES, bundle

    run, destination = Path(argv[1]), Path(argv[2])
    missing = [name for name in ("config.json", *RUN_FILES) if not (run / name).is_file()]
    if missing:
        print(f"error: {run} holds no finished run (no {', '.join(missing)}): train it to the "
              "end first", file=sys.stderr)
        return 2
    bundle(run, destination)
    print(f"bundled {run} into {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
