"""Stage programs that turn images into cached features: `extract vocab|clip|all`."""
