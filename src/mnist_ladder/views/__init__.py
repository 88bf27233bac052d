"""Views: what the stores say, shown — the comparison of two steps, the report, the figures of
what a network sees, the layer table. Nothing here changes what a run learns."""
