"""`python -m evaluate`: decode, score (captioning metrics, CHAIR, CLIPScore), report, compare."""
