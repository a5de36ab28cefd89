"""sta-search: training-free Sliding Tile Attention search for video diffusion transformers."""

__version__ = "0.1.0"
