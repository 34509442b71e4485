"""`python -m lmae_repair` runs the CLI (also what `torchrun -m lmae_repair` needs)."""

from lmae_repair.cli import main

main()
