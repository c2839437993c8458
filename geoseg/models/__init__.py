"""geoseg.models."""
