"""geoseg.infer."""
