"""Data: activation sources and generated data sets."""
