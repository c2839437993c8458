"""geoseg.io."""
