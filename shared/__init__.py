"""Code shared by more than one stage: config, datasets, vocabulary, feature store, models."""
