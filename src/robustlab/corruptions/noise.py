"""noise corruptions (being written)."""
