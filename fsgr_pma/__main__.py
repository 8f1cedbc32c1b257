"""`python -m fsgr_pma`: the `fsgr-pma` console script."""

from fsgr_pma.cli import main

main()
