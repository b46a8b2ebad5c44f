"""Shared network blocks, losses and optimisation helpers used by the methods."""
