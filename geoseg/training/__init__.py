"""geoseg.training."""
