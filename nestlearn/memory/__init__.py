"""nestlearn.memory."""
