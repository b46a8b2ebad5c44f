"""Summary tables and plots of finished sweeps."""
