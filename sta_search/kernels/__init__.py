"""sta_search.kernels: Sliding Tile Attention geometry and kernels."""

from .geometry import DEFAULT_TILE, Geometry, from_tiles, to_tiles
from .sta import sta_attention, sta_attention_tiled

__all__ = ["DEFAULT_TILE", "Geometry", "from_tiles", "sta_attention", "sta_attention_tiled", "to_tiles"]
