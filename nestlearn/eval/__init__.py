"""nestlearn.eval."""
