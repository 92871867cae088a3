"""Text sources: the embedded Wikipedia and news texts, C4 and WikiText-2 from the hub, local .txt/.jsonl files.

Every source yields documents for a part, "calibration" or "evaluation". The embedded
default is the Wikipedia excerpt in the gensim wheel, cleaned (wikimarkup.py) and split by
article, every 4th article to evaluation, so the two parts never share an article.
"news" is a second domain from the same wheel: the Lee background corpus (300 Australian
Broadcasting Corporation news stories, one per line), split the same way. It exists to check
that a method tuned on Wikipedia text holds on text it never saw.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from .cache import atomic_write_bytes, building, cache_dir
from .errors import ProxSparseError
from .wheels import read_member
from .wikimarkup import articles

Part = Literal["calibration", "evaluation"]
PARTS = ("calibration", "evaluation")
DEFAULT_TEXT = "wikipedia"
NEWS_TEXT = "news"
HUB_TEXTS = ("wikitext2", "c4")
TEXT_NAMES = (DEFAULT_TEXT, NEWS_TEXT, *HUB_TEXTS)
SEPARATOR = "\n\n"

_WHEEL = ("gensim", "4.4.0")
_DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_NEWS = "gensim/test/test_data/lee_background.cor"
_FOLDER = "wikipedia-gensim-4.4.0-v1"
_C4_FILES = {"calibration": "en/c4-train.00000-of-01024.json.gz", "evaluation": "en/c4-validation.00000-of-00008.json.gz"}
_C4_EVAL_DOCS = 1100
# byte-order marks of the encodings a "text file" is most often saved in instead of UTF-8 (Windows
# Notepad's "Unicode", PowerShell's redirection); UTF-32 first, as its little-endian mark starts with UTF-16's
_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise ProxSparseError(f"unknown text part '{part}': use one of {', '.join(PARTS)}")


def _wikipedia_files(folder: Path) -> dict[str, Path]:
    return {part: folder / f"{part}.jsonl" for part in PARTS}


def _wikipedia_ok(folder: Path) -> bool:
    """True when both parts exist and match the sha256 recorded in the manifest."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        return all(
            hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"][part]
            for part, path in _wikipedia_files(folder).items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


@building("the default text")
def prepare_wikipedia(rebuild: bool = False) -> Path:
    """The cached folder with the embedded text's two parts (one JSON document a line), built on first use."""
    folder = cache_dir() / "text" / _FOLDER
    if not rebuild and _wikipedia_ok(folder):
        return folder
    found = articles(read_member(*_WHEEL, _DUMP))
    split: dict[str, list[dict]] = {part: [] for part in PARTS}
    for index, (title, text) in enumerate(found):
        split["evaluation" if index % 4 == 3 else "calibration"].append({"title": title, "text": text})
    digests = {}
    for part, path in _wikipedia_files(folder).items():
        data = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in split[part]).encode()
        digests[part] = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(path, data)
    manifest = {"source": f"{_WHEEL[0]}=={_WHEEL[1]}:{_DUMP}", "split": "every 4th article to evaluation",
                "articles": {part: len(docs) for part, docs in split.items()}, "sha256": digests}
    atomic_write_bytes(folder / "manifest.json", json.dumps(manifest, indent=1).encode())
    return folder


def _wikipedia(part: str) -> list[str]:
    path = _wikipedia_files(prepare_wikipedia())[part]
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


@building("the news text")
def _news(part: str) -> list[str]:
    """The news stories of one part: every 4th story (in file order) to evaluation."""
    lines = read_member(*_WHEEL, _NEWS).decode("utf-8").splitlines()
    stories = [line.strip() for line in lines if line.strip()]
    return [story for index, story in enumerate(stories) if (index % 4 == 3) == (part == "evaluation")]


def _hub(name: str, part: str) -> list[str]:
    """Documents of a hub dataset; any failure to reach it becomes a one-line error naming the offline texts."""
    try:
        from datasets import load_dataset

        if name == "wikitext2":
            split = "test" if part == "evaluation" else "train"
            rows = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
            return [row for row in rows if row.strip()] if part == "calibration" else list(rows)
        data = load_dataset("allenai/c4", data_files={"data": _C4_FILES[part]}, split="data")
        docs = data["text"]
        return list(docs[:_C4_EVAL_DOCS]) if part == "evaluation" else list(docs)
    except Exception as err:  # datasets raises many types for "offline", "not found", "timeout"
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ProxSparseError(
            f"could not load '{name}' from the Hugging Face hub ({reason[:200]}); offline, use the "
            f"embedded text ('{DEFAULT_TEXT}') or a local .txt/.jsonl file"
        ) from None


def _read_local(path: Path) -> str:
    """The content of a local .txt/.jsonl file, newlines as "\n"; a path that is missing, a directory,
    unreadable, of another type or not UTF-8 text is a ProxSparseError."""
    try:
        if path.is_dir():
            raise ProxSparseError(f"{path} is a directory, not a text file: use a .txt or .jsonl file")
        if not path.is_file():
            if path.exists():  # a pipe (`--text <(zcat corpus.txt.gz)`), a device, a socket
                raise ProxSparseError(f"{path} is not a regular file: save the text as a .txt or .jsonl file")
            if path.is_symlink():
                raise ProxSparseError(f"text file {path} is a broken symbolic link (to {path.readlink()})")
            raise ProxSparseError(f"text file not found: {path}")
    except OSError as err:
        raise ProxSparseError(f"cannot read text file {path}: {err.strerror or err}") from None
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise ProxSparseError(f"unsupported text file type '{suffix}' ({path}): use a .txt or .jsonl file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ProxSparseError(f"cannot read text file {path}: {err.strerror or err}") from None
    return _decode(path, data)


def _decode(path: Path, data: bytes) -> str:
    """The UTF-8 text of a local file, newlines translated as `Path.read_text` does. A NUL byte or
    invalid UTF-8 means a binary file (weights, an archive) or another encoding: refused, since
    reading it anyway gives a meaningless perplexity or calibrates on garbage. A file that starts
    with a UTF-16 or UTF-32 byte-order mark is named as such, with how to convert it."""
    nul = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = err.start if nul < 0 else min(nul, err.start)
    else:
        if nul < 0:
            return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")  # a BOM is not text
        bad = nul
    encoding = next((name for mark, name in _BOMS if data.startswith(mark)), None)
    if encoding is not None:
        raise ProxSparseError(f"{path} is not a UTF-8 text file: it is {encoding} (byte-order mark at the start); "
                              f"convert it, e.g. `iconv -f {encoding} -t UTF-8`")
    raise ProxSparseError(f"{path} is not a UTF-8 text file (byte 0x{data[bad]:02x} at offset {bad})")


def _local(path: Path) -> list[str]:
    """Documents of a local file: paragraphs (blank-line separated) of a .txt, the "text" field of each .jsonl line."""
    return _split(path, _read_local(path))


def _split(path: Path, raw: str) -> list[str]:
    """The documents in `raw`, the content of the local file `path` (see `_local`); none at all is an error."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        docs = [block for block in raw.split(SEPARATOR) if block.strip()]
    else:
        docs = []
        for number, line in enumerate(raw.split("\n"), 1):  # JSON strings may hold U+2028 and kin raw
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ProxSparseError(f"{path}:{number}: not JSON ({err.msg} at column {err.colno})") from None
            except RecursionError:
                raise ProxSparseError(f"{path}:{number}: not usable JSON (nested too deeply)") from None
            try:
                text = row["text"]
            except (KeyError, TypeError):
                raise ProxSparseError(f"{path}:{number}: expected a JSON object with a \"text\" field") from None
            if not isinstance(text, str):
                raise ProxSparseError(f"{path}:{number}: \"text\" must be a string")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ProxSparseError(f"{path}:{number}: \"text\" holds a lone surrogate escape "
                                      f"(\\u{ord(err.object[err.start]):04x}), which is not text") from None
            if text.strip():
                docs.append(text)
    if not docs:
        raise ProxSparseError(f"text file {path} is empty")
    return docs


def load_documents(source: str | Path | None = None, part: Part = "evaluation") -> list[str]:
    """The documents of a text source for one part.

    `source`: None, "default" or "wikipedia" (embedded, offline), "news" (embedded second domain),
    "wikitext2" or "c4" (Hugging Face hub),
    or a path to a .txt/.jsonl file (the part is then ignored: the file is what you chose).
    """
    _check_part(part)
    name = DEFAULT_TEXT if source is None else str(source)
    if not name.strip():
        raise ProxSparseError(f"the text name is empty: name one of {', '.join(TEXT_NAMES)} or a .txt/.jsonl file")
    if name.lower() in (DEFAULT_TEXT, "default"):
        return _wikipedia(part)
    if name.lower() == NEWS_TEXT:
        return _news(part)
    if name.lower() in HUB_TEXTS:
        return _hub(name.lower(), part)
    path = Path(name).expanduser()
    try:
        exists = path.exists()
    except OSError as err:
        raise ProxSparseError(f"cannot read text file {path}: {err.strerror or err}") from None
    if exists or path.suffix or "/" in name:
        return _local(path)
    raise ProxSparseError(f"unknown text '{name}': use one of {', '.join(TEXT_NAMES)} or a path to a .txt/.jsonl file")


def check_text(source: str | Path | None) -> None:
    """Refuse a text source that could not be used, before a model loads: a local file is read and
    checked as `load_documents` would; embedded and hub names pass unread (no download)."""
    if source is None or str(source).lower() in (*TEXT_NAMES, "default"):
        return
    load_documents(source)


def load_text(source: str | Path | None = None, part: Part = "evaluation") -> str:
    """One string for perplexity: the documents joined by blank lines (a .txt file is returned as is)."""
    if source is not None and str(source).lower().endswith(".txt"):
        path = Path(source).expanduser()
        raw = _read_local(path)
        _split(path, raw)
        return raw
    return SEPARATOR.join(load_documents(source, part))
