"""`python -m tracekit`: the `tracekit` command."""

from tracekit.cli import main

main(prog_name="tracekit")
