"""Text sources: the embedded Wikipedia text (split by article, cached), local files, hub datasets."""

from __future__ import annotations

import json
import os
import re

import pytest

from proxsparse_ao.data import check_text, load_documents, load_text, prepare_wikipedia
from proxsparse_ao.errors import ProxSparseError
from proxsparse_ao.wheels import downloads_dir, fetch_wheel


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache that shares the already downloaded wheels (no second download)."""
    fetch_wheel("gensim", "4.4.0")
    shared = downloads_dir()
    monkeypatch.setenv("PROXSPARSE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "downloads").symlink_to(shared)
    return tmp_path / "cache"


def titles(docs):
    return [doc.splitlines()[0] for doc in docs]


def test_embedded_text_parts_never_share_an_article():
    calibration = load_documents("wikipedia", "calibration")
    evaluation = load_documents("wikipedia", "evaluation")
    assert len(evaluation) >= 20 and len(calibration) >= 3 * len(evaluation) - 3
    assert not set(titles(calibration)) & set(titles(evaluation))
    assert all(title.startswith(" = ") and title.endswith(" = ") for title in titles(evaluation))


def test_news_text_is_another_domain_split_by_story():
    calibration = load_documents("news", "calibration")
    evaluation = load_documents("news", "evaluation")
    assert (len(calibration), len(evaluation)) == (225, 75)  # 300 stories, every 4th to evaluation
    assert not set(calibration) & set(evaluation)
    assert not set(evaluation) & set(load_documents("wikipedia", "evaluation"))
    assert evaluation[0].startswith("Argentina's political and economic crisis")  # the 4th story of the file
    assert sum(len(doc) for doc in evaluation) > 80_000 and " = " not in load_text("news")


def test_embedded_evaluation_text_is_real_prose_without_markup():
    text = load_text()
    assert len(text) > 500_000
    for marker in ("[[", "{{", "<ref", "'''"):
        assert marker not in text
    assert " = = " in text


def test_embedded_text_is_rebuilt_identically(fresh_cache):
    folder = prepare_wikipedia()
    built = {p.name: p.read_bytes() for p in folder.iterdir()}
    prepare_wikipedia(rebuild=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == built


def test_a_corrupt_or_half_written_text_cache_is_rebuilt(fresh_cache):
    folder = prepare_wikipedia()
    expected = load_documents("wikipedia", "evaluation")
    path = folder / "evaluation.jsonl"
    path.write_bytes(path.read_bytes()[:1000])
    assert load_documents("wikipedia", "evaluation") == expected
    (folder / "manifest.json").unlink()
    assert load_documents("wikipedia", "evaluation") == expected


def test_a_cache_the_default_text_cannot_be_built_in_is_one_error_naming_it(fresh_cache):
    (fresh_cache / "text").write_text("a file where the text folder goes")
    with pytest.raises(ProxSparseError, match=rf"^cannot build the default text in the cache folder {fresh_cache} \(.*Not a directory\)"):
        load_text()


def test_txt_file_is_read_verbatim_and_split_into_paragraphs(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first paragraph\nstill first\n\nsecond\n\n\n")
    assert load_text(path) == "first paragraph\nstill first\n\nsecond\n\n\n"
    assert load_documents(path) == ["first paragraph\nstill first", "second"]


def test_jsonl_file_gives_the_text_field_of_each_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["one", "two"])) + "\n")
    assert load_documents(path) == ["one", "two"]
    assert load_text(path) == "one\n\ntwo"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "text file not found"),
        ("empty.txt", "  \n\n ", "is empty"),
        ("empty.jsonl", "", "is empty"),
        ("bad.jsonl", '{"text": "ok"}\n{"body": "no text"}\n', r"bad.jsonl:2: expected a JSON object"),
        ("table.csv", "a,b\n", "unsupported text file type '.csv'"),
    ],
)
def test_bad_local_files_are_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ProxSparseError, match=message):
        load_documents(path)


def test_unknown_text_name_lists_the_known_ones():
    with pytest.raises(ProxSparseError, match="unknown text 'wikitext103': use one of wikipedia, news, wikitext2, c4"):
        load_documents("wikitext103")


def test_unknown_part_is_a_clear_error():
    with pytest.raises(ProxSparseError, match="unknown text part 'train'"):
        load_documents("wikipedia", "train")


@pytest.mark.parametrize("name", ["wikitext2", "c4"])
def test_hub_datasets_offline_name_the_offline_alternative(name):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(ProxSparseError, match=f"could not load '{name}' from the Hugging Face hub.*'wikipedia'"):
        load_documents(name, "evaluation")


def test_default_is_an_alias_of_the_embedded_text():
    assert load_documents("default", "calibration") == load_documents(None, "calibration")


def test_a_directory_given_as_a_text_file_is_called_a_directory(tmp_path):
    folder = tmp_path / "texts.txt"
    folder.mkdir()
    for load in (load_documents, load_text):
        with pytest.raises(ProxSparseError, match=f"{folder} is a directory, not a text file"):
            load(folder)
    with pytest.raises(ProxSparseError, match="is a directory"):
        load_documents(tmp_path)


@pytest.mark.parametrize("name", ["notes.txt", "docs.jsonl"])
def test_an_unreadable_text_file_is_a_clear_error(tmp_path, monkeypatch, name):
    from pathlib import Path

    path = tmp_path / name
    path.write_text("some text\n")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    for load in (load_documents, load_text):
        with pytest.raises(ProxSparseError, match=f"cannot read text file {path}: Permission denied"):
            load(path)


def test_a_txt_file_is_read_once_for_perplexity(tmp_path, monkeypatch):
    from pathlib import Path

    path = tmp_path / "notes.txt"
    path.write_text("one\n\ntwo\n")
    reads = []
    original = Path.read_bytes

    def counting(self, *args, **kwargs):
        reads.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", counting)
    assert load_text(path) == "one\n\ntwo\n" and reads == [path]


def _gzip(text: str) -> bytes:
    import gzip

    return gzip.compress(text.encode(), mtime=0)


def _safetensors() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"weight": torch.zeros(4)})


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("corpus.jsonl", _gzip('{"text": "compressed"}\n'), "byte 0x8b at offset 1"),  # gzip: 1f 8b
        ("weights.txt", _safetensors(), "byte 0x00 at offset 1"),  # an 8-byte little-endian header length
        ("latin1.txt", "caf\u00e9 au lait\n".encode("latin-1"), "byte 0xe9 at offset 3"),
        ("nul.txt", b"plain text\x00 then more text\n", "byte 0x00 at offset 10"),
        ("first.txt", b"ab\xffcd\x00ef", "byte 0xff at offset 2"),  # the first offending byte is named
        ("first.jsonl", b"a\x00b\xff", "byte 0x00 at offset 1"),
    ],
)
def test_a_file_that_is_not_utf8_text_is_refused_naming_the_first_bad_byte(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    for load in (load_documents, load_text, check_text):
        with pytest.raises(ProxSparseError, match=f"^{re.escape(f'{path} is not a UTF-8 text file ({reason})')}$"):
            load(path)


@pytest.mark.parametrize(
    ("name", "mark", "codec", "encoding"),
    [
        ("notepad.txt", b"\xff\xfe", "utf-16-le", "UTF-16"),
        ("big-endian.jsonl", b"\xfe\xff", "utf-16-be", "UTF-16"),
        ("wide.txt", b"\xff\xfe\x00\x00", "utf-32-le", "UTF-32"),
        ("wide-big-endian.txt", b"\x00\x00\xfe\xff", "utf-32-be", "UTF-32"),
    ],
    ids=["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"],
)
def test_a_utf16_or_utf32_file_with_a_byte_order_mark_is_named_with_how_to_convert_it(tmp_path, name, mark, codec, encoding):
    """Such a file (Windows Notepad's "Unicode", PowerShell's `>`) was told only of its first byte, 0xff, 0xfe or 0x00."""
    path = tmp_path / name
    path.write_bytes(mark + '{"text": "caf\u00e9 au lait"}\n'.encode(codec))
    message = (f"{path} is not a UTF-8 text file: it is {encoding} (byte-order mark at the start); "
               f"convert it, e.g. `iconv -f {encoding} -t UTF-8`")
    for load in (load_documents, load_text, check_text):
        with pytest.raises(ProxSparseError, match=f"^{re.escape(message)}$"):
            load(path)


def test_utf16_without_a_byte_order_mark_is_told_of_its_first_bad_byte(tmp_path):
    path = tmp_path / "no-mark.txt"
    path.write_bytes("caf\u00e9\n".encode("utf-16-le"))
    with pytest.raises(ProxSparseError, match=f"^{re.escape(f'{path} is not a UTF-8 text file (byte 0x00 at offset 1)')}$"):
        load_documents(path)


def test_utf8_text_with_windows_newlines_reads_like_the_same_text_with_unix_newlines(tmp_path):
    text = "caf\u00e9 one\nstill one\n\ntwo\n"
    windows, unix = tmp_path / "windows.txt", tmp_path / "unix.txt"
    windows.write_bytes(text.replace("\n", "\r\n").encode())
    unix.write_bytes(text.encode())
    assert load_text(windows) == load_text(unix) == text
    assert load_documents(windows) == load_documents(unix) == ["caf\u00e9 one\nstill one", "two\n"]


def test_check_text_reads_a_local_file_but_never_a_named_source(tmp_path, monkeypatch):
    import proxsparse_ao.data as data

    def no_loading(*args, **kwargs):
        raise AssertionError("a named source was loaded")

    monkeypatch.setattr(data, "_hub", no_loading)
    monkeypatch.setattr(data, "prepare_wikipedia", no_loading)
    for name in (None, "default", "wikipedia", "News", "wikitext2", "c4"):
        check_text(name)
    good = tmp_path / "good.txt"
    good.write_text("some text\n")
    check_text(good)
    with pytest.raises(ProxSparseError, match="text file not found"):
        check_text(tmp_path / "missing.txt")
    with pytest.raises(ProxSparseError, match="unknown text 'wikitext103'"):
        check_text("wikitext103")


def test_jsonl_lines_split_on_newlines_only_and_a_bom_is_not_text(tmp_path):
    """json.dumps(..., ensure_ascii=False) writes U+2028 raw inside strings; editors may start a file with a BOM."""
    rows = ["line\u2028separator", "next\u0085line", "plain"]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps({"text": r}, ensure_ascii=False) for r in rows).encode())
    assert load_documents(jsonl) == rows
    txt = tmp_path / "bom.txt"
    txt.write_bytes(b"\xef\xbb\xbfsome text\n")
    assert load_text(txt) == "some text\n"


def test_a_jsonl_text_with_a_lone_surrogate_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "lone \\ud800 half"}\n')
    with pytest.raises(ProxSparseError, match=re.escape(f"{path}:2: \"text\" holds a lone surrogate escape (\\ud800)")):
        load_documents(path)


def test_every_fourth_article_of_the_dump_goes_to_evaluation(fresh_cache):
    from proxsparse_ao.data import _DUMP, _WHEEL
    from proxsparse_ao.wheels import read_member
    from proxsparse_ao.wikimarkup import articles

    texts = [text for _, text in articles(read_member(*_WHEEL, _DUMP))]
    assert load_documents("wikipedia", "evaluation") == texts[3::4]
    assert load_documents("wikipedia", "calibration") == [text for i, text in enumerate(texts) if i % 4 != 3]


def test_hub_texts_take_the_documented_splits(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, *, split, data_files=None):
        calls.append((path, name, split, data_files))
        if path == "allenai/c4":
            return {"text": [f"doc {i}" for i in range(1500)]}
        return {"text": ["a", " ", "", "b"]}

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_documents("c4", "evaluation") == [f"doc {i}" for i in range(1100)]  # the first 1100 validation documents
    assert len(load_documents("c4", "calibration")) == 1500
    assert [call[3]["data"] for call in calls] == ["en/c4-validation.00000-of-00008.json.gz", "en/c4-train.00000-of-01024.json.gz"]
    assert load_documents("wikitext2", "evaluation") == ["a", " ", "", "b"]  # the test split as it is
    assert load_documents("wikitext2", "calibration") == ["a", "b"]  # blank rows are no documents
    assert [call[2] for call in calls[2:]] == ["test", "train"]


def test_a_missing_path_without_a_suffix_is_a_missing_file_not_an_unknown_name(tmp_path):
    with pytest.raises(ProxSparseError, match="text file not found"):
        load_documents(str(tmp_path / "no" / "such-text"))


def test_a_pipe_or_a_broken_link_is_named_as_such_not_as_a_missing_file(tmp_path):
    """`--text <(zcat corpus.txt.gz)` passes /dev/fd/63, which exists but is no file."""
    pipe, link = tmp_path / "pipe.txt", tmp_path / "link.txt"
    os.mkfifo(pipe)
    link.symlink_to(tmp_path / "moved.txt")
    for load in (load_documents, load_text, check_text):
        with pytest.raises(ProxSparseError, match=f"^{re.escape(f'{pipe} is not a regular file')}"):
            load(pipe)
        with pytest.raises(ProxSparseError, match=re.escape(f"text file {link} is a broken symbolic link (to {tmp_path / 'moved.txt'})")):
            load(link)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "a "quoted" word"}', "not JSON (Expecting ',' delimiter at column 14)"),  # it has a "text" field
        ("[" * 100_000 + "]" * 100_000, "not usable JSON (nested too deeply)"),
        ('["text"]', 'expected a JSON object with a "text" field'),
    ],
    ids=["invalid", "too deep", "not an object"],
)
def test_a_jsonl_line_that_is_not_json_is_named_as_such_with_its_line_number(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine"}\n\n' + line + "\n")
    for load in (load_documents, load_text, check_text):
        with pytest.raises(ProxSparseError, match=f"^{re.escape(f'{path}:3: {message}')}$"):
            load(path)
