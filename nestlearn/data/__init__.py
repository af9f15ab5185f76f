"""nestlearn.data."""
