"""nestlearn.train."""
