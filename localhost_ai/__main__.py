"""`python -m localhost_ai` runs the CLI."""

from localhost_ai.cli import main

main()
