"""Ready-made data loaders and models for the example experiments."""
