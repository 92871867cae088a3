"""proxsparse-ao: learn 2:4 semi-structured sparsity masks for pretrained LLMs (ProxSparse) and deploy them through torch.compile."""

from .masks import (
    SparsityPatternError,
    apply_mask,
    apply_mask_,
    check_nm,
    fraction_nm,
    is_nm,
    magnitude_mask,
    nm_mask,
    pattern_stats,
)
from .prox import prox_2to4, prox_2to4_
from .regularizers import frozen_weight_penalty, r_2to4

__all__ = [
    "SparsityPatternError",
    "apply_mask",
    "apply_mask_",
    "check_nm",
    "fraction_nm",
    "frozen_weight_penalty",
    "is_nm",
    "magnitude_mask",
    "nm_mask",
    "pattern_stats",
    "prox_2to4",
    "prox_2to4_",
    "r_2to4",
]
__version__ = "0.1.0"
