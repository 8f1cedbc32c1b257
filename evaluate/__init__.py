"""Stage program `python -m evaluate`: not built yet (see the open issues); `make evaluate` says so."""
