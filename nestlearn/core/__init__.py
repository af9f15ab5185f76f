"""nestlearn.core."""
