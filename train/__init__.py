"""Stage program `python -m train`: not built yet (see the open issues); `make train` says so."""
