"""`python -m nagindex.cli` is the `nag` command too."""

from nagindex.cli import main

main()
