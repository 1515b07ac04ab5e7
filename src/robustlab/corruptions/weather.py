"""weather corruptions (being written)."""
