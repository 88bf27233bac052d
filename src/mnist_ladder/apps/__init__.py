"""Applications: the `ladder` command, the `ladder serve` page, predict, export and the
starter file that `ladder new` writes."""
