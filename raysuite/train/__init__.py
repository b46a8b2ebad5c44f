"""Plain-PyTorch training: the epoch loop and a single-process runtime (no Ray)."""
