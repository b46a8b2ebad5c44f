"""raysuite: a distributed experiment sweeper for label-efficient medical imaging."""

__version__ = "0.1.0"
