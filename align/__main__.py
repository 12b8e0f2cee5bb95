"""`python -m align` (and `accelerate launch -m align ...`) runs the CLI."""

from align.cli import main

main()
