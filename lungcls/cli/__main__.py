"""`python -m lungcls.cli`: the same as the `lungcls` command."""

from lungcls.cli import run

run()
