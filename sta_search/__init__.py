"""sta-search: training-free Sliding Tile Attention search for video diffusion transformers."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import sta_search` stays cheap (no torch / diffusers import until first use).
    if name == "accelerate":
        from .accelerate import accelerate

        globals()["accelerate"] = accelerate
        return accelerate
    raise AttributeError(f"module 'sta_search' has no attribute {name!r}")
