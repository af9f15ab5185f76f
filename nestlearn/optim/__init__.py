"""nestlearn.optim."""
