"""Certified robustness: randomized smoothing (and, later, bound propagation)."""
