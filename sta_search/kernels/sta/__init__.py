from ..backends import BACKENDS, can_run_flex, can_run_gluon, can_run_reference, can_run_triton
from ..backends import TRITON_HEAD_DIMS as SUPPORTED_HEAD_DIMS
from .api import normalize_windows, sta_attention, sta_attention_tiled
from .reference import sta_mask, sta_reference

__all__ = [
    "BACKENDS", "SUPPORTED_HEAD_DIMS", "can_run_flex", "can_run_gluon", "can_run_reference", "can_run_triton",
    "normalize_windows", "sta_attention", "sta_attention_tiled", "sta_mask", "sta_reference",
]
