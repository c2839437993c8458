"""geoseg.batch."""
