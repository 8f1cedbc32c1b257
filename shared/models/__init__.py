"""Neural network modules (pure model code, no I/O)."""
