"""Saving and loading a pruned model: an HF folder plus compact masks and `proxsparse.json`.

Folder layout: the Hugging Face files (`config.json`, `model.safetensors`, tokenizer files)
with the pruned weights stored dense, pruned entries +0.0; `masks.safetensors` with one
uint8 per group of 4 (bit k set = position k kept; 1/16 the size of an fp32 weight); and
`proxsparse.json` (format, config, source model, data, statistics). The folder is written
under a hidden temporary name and renamed into place, so an interrupted save never leaves a
folder that loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .cache import check_writable_folder
from .calibration import check_tokenizer
from .errors import ProxSparseError
from .masks import check_nm, mask_codes

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MASKS_FILE = "masks.safetensors"
METADATA_FILE = "proxsparse.json"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
"""Any of these in a folder means a saved tokenizer (transformers writes tokenizer_config.json with every one)."""
FORMAT = "proxsparse-2:4/v1"
RESERVED_KEYS = ("format", "masks_file", "targets")  # what proxsparse.json holds beside the caller's metadata
_BITS = torch.tensor([1, 2, 4, 8], dtype=torch.uint8)
_TWO_OF_FOUR = torch.tensor([bin(code).count("1") == 2 for code in range(256)])  # the codes that keep 2 of 4
# what a Hugging Face save writes into the folder (model and tokenizer), beside the masks and proxsparse.json
_HF_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)


def encode_masks(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """bool [out, in] masks -> uint8 codes [out, in/4] (bit k of a code = position k kept)."""
    return {name: mask_codes(mask.cpu()).reshape(mask.shape[0], -1).contiguous() for name, mask in masks.items()}


def decode_masks(codes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `encode_masks`."""
    return {name: ((c.unsqueeze(-1) & _BITS) != 0).reshape(c.shape[0], -1) for name, c in codes.items()}


def check_mask_codes(codes: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse saved mask codes (one uint8 per group of 4, bit k = position k kept) that do not keep
    exactly 2 of every 4: such a mask is not a 2:4 mask, so checking weights against it means nothing."""
    bad = {}
    for name, code in codes.items():
        if code.dtype != torch.uint8 or code.dim() != 2:
            kind = str(code.dtype).removeprefix("torch.")
            raise ProxSparseError(f"{path} cannot be read: the mask of {name} is {kind} of shape {tuple(code.shape)}, "
                                  "expected 2-D uint8 codes (one per group of 4)")
        groups = int((~_TWO_OF_FOUR[code.long()]).sum())
        if groups:
            bad[name] = (groups, code.numel())
    if bad:
        names = sorted(bad)
        first = names[0]
        more = f" (and {len(names) - 1} more layer{'s' if len(names) > 2 else ''})" if len(names) > 1 else ""
        raise ProxSparseError(
            f"{path} is not a 2:4 mask file: the saved mask of {first} does not keep exactly 2 of every 4 "
            f"weights ({bad[first][0]:,} of {bad[first][1]:,} groups){more}"
        )


def check_pruned(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Every masked weight is exactly 2:4, zero (+0.0) wherever its mask is off."""
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight.detach()
        check_nm(weight, name)
        off = weight[~mask.to(weight.device)]
        if bool((off != 0).any()) or bool(torch.signbit(off).any()):
            raise ProxSparseError(f"{name}: the weight is not +0.0 everywhere its mask is off")


def _check_extra_files(names: list[str], taken: set[str]) -> None:
    """Refuse extra file names that are not plain file names or that would replace one of the folder's own
    files (`taken`): the folder would then not load, or load something else, and nothing would say so."""
    odd = [name for name in names if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name]
    if odd:
        raise ProxSparseError(f"save_pruned: extra_files names must be plain file names, got {', '.join(map(repr, odd))}")
    clashes = sorted(set(names) & taken)
    if clashes:
        raise ProxSparseError(
            f"save_pruned: extra_files {', '.join(clashes)} would replace the pruned-model folder's own "
            f"file{'s' if len(clashes) > 1 else ''}: give {'them' if len(clashes) > 1 else 'it'} another name"
        )


def _unwrapped(model: nn.Module, masks: dict[str, torch.Tensor]) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The model inside a `torch.compile` (OptimizedModule) or `proxsparse_ao.compile` wrapper, and the
    masks by its own layer names: the folder holds that model, so masks named through the wrapper
    (`stored_masks(compiled)`: "_orig_mod.model.layers...") would name layers the loaded model lacks."""
    from .targets import eager_model

    compiler = sys.modules.get(f"{__package__}.compiler")  # not imported: no proxsparse_ao.compile wrapper exists
    while True:
        wrapped = compiler is not None and isinstance(model, compiler.Sparse24Compiled)
        inner = model.model if wrapped else eager_model(model)
        if inner is model:
            return model, masks
        names = {id(module): name for name, module in inner.named_modules()}
        outer = dict(model.named_modules())
        if isinstance(masks, dict):
            masks = {names.get(id(outer[name]), name) if name in outer else name: mask for name, mask in masks.items()}
        model = inner


def save_pruned(
    model: nn.Module,
    output: str | Path,
    masks: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    overwrite: bool = False,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write the pruned model folder atomically; an existing folder is replaced only with `overwrite`.
    `masks`: by layer name (after `sparsify_`, `stored_masks(model)`). `metadata` goes into
    proxsparse.json beside the keys this format owns; `extra_files` (name -> bytes, e.g. the
    learning log) go into the folder too, under plain names of their own (one of the folder's
    files, such as config.json or masks.safetensors, is refused before anything is written).
    Leftovers of earlier saves to `output` whose process ended (a killed save) are removed. A compiled
    model (`torch.compile`, `proxsparse_ao.compile`) is saved as the model it wraps."""
    from safetensors.torch import save_file

    from .targets import masked_modules

    _check_path(output, "save_pruned: output")
    if not isinstance(overwrite, bool):
        raise ProxSparseError(f"save_pruned: overwrite must be True or False, got {type(overwrite).__name__} {overwrite!r}")
    if extra_files is not None and not isinstance(extra_files, dict):
        raise ProxSparseError(f"save_pruned: extra_files must be a dict of file name -> bytes, got {type(extra_files).__name__}")
    if metadata is not None and not isinstance(metadata, dict):
        raise ProxSparseError(f"save_pruned: metadata must be a dict, got {type(metadata).__name__}")
    metadata = dict(metadata or {})
    reserved = sorted(set(metadata) & set(RESERVED_KEYS))
    if reserved:
        raise ProxSparseError(f"save_pruned: metadata key(s) {', '.join(reserved)} belong to the folder format; rename them")
    try:
        json.dumps(metadata, default=str)
    except (TypeError, ValueError) as err:
        raise ProxSparseError(f"save_pruned: metadata cannot be written as JSON ({err})") from None
    if tokenizer is not None:
        check_tokenizer(tokenizer, "save_pruned", "save_pretrained")
    not_bytes = sorted(str(name) for name, content in dict(extra_files or {}).items() if not isinstance(content, (bytes, bytearray)))
    if not_bytes:
        raise ProxSparseError(f"save_pruned: extra_files contents must be bytes (encode text first), not for {', '.join(not_bytes)}")
    if not masks:
        raise ProxSparseError("save_pruned: no masks, so nothing was pruned (after sparsify_, pass stored_masks(model))")
    model, masks = _unwrapped(model, masks)
    masked_modules(model, masks)
    extra_files = dict(extra_files or {})
    _check_extra_files(list(extra_files), {MASKS_FILE, METADATA_FILE, *_HF_FILES})
    output = check_output(output, overwrite)
    check_pruned(model, masks)
    codes = encode_masks(masks)
    check_mask_codes(codes, output / MASKS_FILE)
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(output)
    build = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-{_owner()}-"))
    umask = os.umask(0)
    os.umask(umask)
    try:
        model.save_pretrained(build)
        if tokenizer is not None:
            tokenizer.save_pretrained(build)
        _check_extra_files(list(extra_files), {path.name for path in build.iterdir()})  # what this model and tokenizer wrote
        save_file(codes, str(build / MASKS_FILE), metadata={"format": FORMAT})
        for name, content in extra_files.items():
            (build / name).write_bytes(content)
        document = {"format": FORMAT, "masks_file": MASKS_FILE, "targets": sorted(masks), **metadata}
        (build / METADATA_FILE).write_text(json.dumps(document, indent=1, sort_keys=False, default=str))
        os.chmod(build, 0o777 & ~umask)  # mkdtemp and safetensors' temporary files are private;
        for path in build.iterdir():  # the saved folder gets the permissions of any other new file
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        stale = output.with_name(f".{output.name}.stale-{_owner()}")
        if output.exists():
            os.replace(output, stale)
        try:
            os.replace(build, output)
        except BaseException:
            if stale.exists() and not output.exists():
                os.replace(stale, output)  # the old folder back where it was
            raise
        _remove(stale)  # only once the new folder is in place
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return output


def _check_path(path: Any, what: str) -> None:
    """Refuse a folder argument that is no path (None, a number): pathlib's TypeError would name neither
    the argument nor the call."""
    if not isinstance(path, (str, os.PathLike)):
        raise ProxSparseError(f"{what} must be a folder path (str or pathlib.Path), got {type(path).__name__} {path!r}")


def check_output(
    output: str | Path, overwrite: bool, source: str | Path | None = None, *, overwrite_flag: str = "overwrite=True"
) -> Path:
    """The absolute output folder, if a save may write it: new, or with `overwrite` an earlier
    pruned-model folder (it has proxsparse.json) or an empty one; never the current folder or one
    above it, nor the model being pruned (`source`) or a folder inside it. Called before any work
    and again by `save_pruned`; `overwrite_flag` is how the caller's user asks for overwrite (the
    CLI: "--overwrite")."""
    output = Path(output).expanduser().absolute()
    here = Path.cwd().resolve()
    resolved = output.resolve()
    if resolved == here or resolved in here.parents:
        raise ProxSparseError(f"{output} is the current folder or holds it: choose an output folder of its own")
    if source is not None and Path(source).expanduser().exists():
        model = Path(source).expanduser().resolve()
        if model == resolved:
            raise ProxSparseError(f"{output} is the model being pruned: write the pruned model to another folder")
        if model in resolved.parents:
            raise ProxSparseError(f"{output} is inside the model folder being pruned ({source}): write the pruned model elsewhere")
    check_writable_folder(output.parent, str(output))  # the save writes a temporary folder next to it
    if not output.exists() and not output.is_symlink():
        return output
    if not overwrite:
        raise ProxSparseError(f"{output} already exists: pass {overwrite_flag} to replace it")
    if not output.is_dir() or output.is_symlink():
        raise ProxSparseError(f"{output} is not a folder: refusing to replace it")
    if not (output / METADATA_FILE).is_file() and any(output.iterdir()):
        raise ProxSparseError(f"{output} is not a pruned-model folder (no {METADATA_FILE}): refusing to replace what it holds")
    return output


def _owner() -> str:
    """This process, as named in temporary folders: pid and a hash of the host (folders may be shared)."""
    return f"{os.getpid()}-{hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _remove_leftovers(output: Path) -> None:
    """Temporary and replaced folders of earlier saves to `output` whose process on this host has
    ended; a replaced folder only once `output` is there (else it may be all that is left)."""
    host = _owner().split("-")[1]
    for kind in ("tmp", "stale") if output.exists() else ("tmp",):
        prefix = f".{output.name}.{kind}-"
        for path in output.parent.iterdir():
            if not path.name.startswith(prefix):
                continue
            pid, _, rest = path.name[len(prefix):].partition("-")
            if pid.isdigit() and rest[:8] == host and int(pid) != os.getpid() and not _alive(int(pid)):
                _remove(path)


def read_metadata(folder: str | Path) -> dict[str, Any] | None:
    """The folder's `proxsparse.json` (None when it has none); a file that does not parse is a ProxSparseError."""
    path = Path(folder) / METADATA_FILE
    try:
        if not path.exists():
            return None
        text = path.read_text()
    except OSError as err:
        raise ProxSparseError(f"{path} cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ProxSparseError(f"{path} does not parse: {err}") from None
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProxSparseError(f"{path} does not parse: {err}") from None
    if not isinstance(metadata, dict):
        raise ProxSparseError(f"{path} does not parse: expected a JSON object, got {type(metadata).__name__}")
    if metadata.get("format") != FORMAT:
        raise ProxSparseError(f"{path}: unknown format {metadata.get('format')!r}, expected {FORMAT!r}")
    targets = metadata.get("targets")
    if not isinstance(targets, list) or not all(isinstance(name, str) for name in targets):
        raise ProxSparseError(f"{path}: 'targets' must be a list of layer names")
    return metadata


def read_masks(folder: str | Path, metadata: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The saved masks (bool [out, in] per target) named by the metadata; a damaged masks file is a ProxSparseError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    name = metadata.get("masks_file", MASKS_FILE)
    if not isinstance(name, str) or Path(name).name != name:
        raise ProxSparseError(f"{Path(folder) / METADATA_FILE}: 'masks_file' must name a file in the folder, got {name!r}")
    path = Path(folder) / name
    if not path.is_file():
        raise ProxSparseError(f"{path} is missing (proxsparse.json refers to it)")
    try:
        codes = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ProxSparseError(f"{path} cannot be read: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None
    check_mask_codes(codes, path)
    return decode_masks(codes)


def _check_targets(folder: Path, metadata: dict[str, Any], masks: dict[str, torch.Tensor]) -> None:
    """The masks file holds a mask for exactly the layers proxsparse.json lists as targets."""
    listed, saved = set(metadata["targets"]), set(masks)
    if listed == saved:
        return

    def some(names: set[str]) -> str:
        ordered = sorted(names)
        return ", ".join(ordered[:3]) + (f" and {len(ordered) - 3} more" if len(ordered) > 3 else "")

    parts = []
    if saved - listed:
        parts.append(f"{len(saved - listed)} mask(s) for layers it does not list ({some(saved - listed)})")
    if listed - saved:
        parts.append(f"{len(listed - saved)} listed target(s) without a mask ({some(listed - saved)})")
    name = metadata.get("masks_file", MASKS_FILE)
    raise ProxSparseError(f"{folder / name} does not match the targets in {METADATA_FILE}: {'; '.join(parts)}")


def load_pruned(
    folder: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None, dict[str, torch.Tensor], dict[str, Any]]:
    """(model, tokenizer or None, masks, metadata) from a folder `save_pruned` wrote; masks are re-checked and attached.
    The tokenizer is None where the folder holds none (transformers is not asked: some versions then try converters
    and raise ImportError) or one this transformers cannot load."""
    from transformers import AutoTokenizer

    from .api import attach_masks
    from .models import check_dtype, load_causal_lm, usable_device

    _check_path(folder, "load_pruned: folder")
    check_dtype(dtype)
    device = usable_device(device)
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ProxSparseError(f"{folder} does not exist")
    if not folder.is_dir():
        raise ProxSparseError(f"{folder} is a file: a pruned model is a folder")
    metadata = read_metadata(folder)
    if metadata is None:
        raise ProxSparseError(f"{folder} is not a pruned model folder (no {METADATA_FILE})")
    masks = read_masks(folder, metadata)
    _check_targets(folder, metadata, masks)
    model = load_causal_lm(folder, dtype=dtype)
    model.to(device)
    tokenizer = None
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError, ImportError):  # ImportError: a converter's package (sentencepiece, protobuf) is missing
            tokenizer = None
    modules = dict(model.named_modules())
    absent = sorted(name for name in masks if not isinstance(modules.get(name), nn.Linear))
    if absent:
        raise ProxSparseError(f"the saved masks name {len(absent)} layer(s) that are not linears of the model: {', '.join(absent[:3])}")
    check_pruned(model, masks)
    attach_masks(model, masks)
    return model, tokenizer, masks, metadata
