"""fieldguide: plain library code for photo-based species identification (no ZenML imports)."""

__version__ = "0.1.0"
