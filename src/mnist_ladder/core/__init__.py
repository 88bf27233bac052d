"""The bottom layer: what every other layer may use and that uses nothing of the package —
the error base class, the ladder's goal, atomic writes, the version."""
