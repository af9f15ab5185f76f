"""nestlearn.models."""
