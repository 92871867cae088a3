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
from . import ops as _ops  # noqa: F401  registers proxsparse::linear24, so saved programs that use it load
from .errors import ProxSparseError
from .prox import prox_2to4, prox_2to4_
from .regularizers import frozen_weight_penalty, r_2to4

__all__ = [
    "CompileReport",
    "ProxSparseError",
    "SparsityPatternError",
    "apply_mask",
    "apply_mask_",
    "check_nm",
    "compile",
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


# Mask learning loads on first use too (it imports torchao and transformers): name -> submodule.
_LEARNING = {
    "ConfigError": "config",
    "FrozenWeightTerm": "hooks",
    "LearnResult": "training",
    "MagnitudeConfig": "baselines",
    "NoTargetsError": "targets",
    "NonFiniteLossWarning": "training",
    "SparseGPTConfig": "baselines",
    "WandaConfig": "baselines",
    "ProxSparseConfig": "config",
    "ProxStep": "hooks",
    "StepStats": "training",
    "apply_masks": "api",
    "attach_masks": "api",
    "learn": "api",
    "learn_masks": "training",
    "load_pruned": "export",
    "relative_strengths": "hooks",
    "save_pruned": "export",
    "select_targets": "targets",
    "sparsify_": "api",
    "stored_masks": "api",
    "target_filter": "targets",
}
__all__ += sorted(_LEARNING)


def __getattr__(name: str):
    """Heavy parts load on first use: mask learning (torchao, transformers), `compile` (torch._inductor)."""
    if name in _LEARNING:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LEARNING[name]}"), name)
        globals()[name] = value
        return value
    if name in ("compile", "CompileReport"):
        import importlib

        _compile_module = importlib.import_module(f"{__name__}.compiler")
        globals().update(compile=_compile_module.compile, CompileReport=_compile_module.CompileReport)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
