"""blur corruptions (being written)."""
