"""embquant: float32 embeddings to bit-packed int64 codes and back, over HTTP."""

__version__ = "0.1.0"
