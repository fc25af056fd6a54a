"""facefactors: disentangled image representations, trained and measured under one protocol."""
__version__ = "0.1.0"
