"""geoseg.vectorize."""
