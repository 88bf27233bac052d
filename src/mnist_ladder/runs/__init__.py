"""Runs: the results store, one run from spec to stored weights, the catalog of steps (built
in and the user's), which stored runs are a step's results, and the sweep."""
