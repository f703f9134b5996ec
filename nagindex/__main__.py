"""`python -m nagindex ...` is the `nag` command (also `accelerate launch -m nagindex extract ...`)."""

from nagindex.cli import main

main()
