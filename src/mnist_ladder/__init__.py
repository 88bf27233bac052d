"""mnist-ladder: climb from a 6.4M-parameter baseline to a <8k-parameter CNN at 99.4%."""

__version__ = "0.1.0"
