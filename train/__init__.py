"""Stage program `python -m train`: the caption decoder (XE) trained from the feature cache."""
