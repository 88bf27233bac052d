"""The package's version, written once: pyproject.toml reads it from here, and so do
`ladder --version` and `mnist_ladder.__version__`."""

__version__ = "0.2.0"
