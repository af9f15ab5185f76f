"""Pallas kernels for the associative-memory updates, installed as `nestlearn.kernels`."""
