"""Stage program `python -m cluster`: not built yet (see the open issues); `make cluster` says so."""
