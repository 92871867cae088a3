"""Graph passes: the 2:4 post-grad pass and the weight swap, both ending in `proxsparse::linear24`."""

from .select import DEFAULT_EXCLUDE, LinearWeights, excluded_by, linear_status
from .sparse24 import PassRecord, Sparse24Pass
from .swap import SparseLinear24, swap_linears

__all__ = [
    "DEFAULT_EXCLUDE",
    "LinearWeights",
    "PassRecord",
    "Sparse24Pass",
    "SparseLinear24",
    "excluded_by",
    "linear_status",
    "swap_linears",
]
