"""MediaWiki markup to WikiText-style plain text: a small deterministic regex cleaner.

Keeps prose paragraphs and headings (rendered " = = Heading = = " as in WikiText), drops
templates, tables, references, files, categories, lists and the reference-like sections.
Pure functions of their input: the same dump always gives the same text.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET

_DROPPED_SECTIONS = {
    "references", "external links", "see also", "further reading", "notes", "bibliography",
    "sources", "footnotes", "citations", "notes and references", "references and notes",
}
_DROPPED_LINK_PREFIXES = ("file:", "image:", "category:", "media:", "wikt:", "wiktionary:")
_BLOCK_TAGS = ("ref", "math", "gallery", "timeline", "score", "syntaxhighlight", "source", "pre", "imagemap", "chem")

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_SELF_CLOSING_REF = re.compile(r"<ref[^>/]*/>", re.I)
_BLOCKS = re.compile(r"<(%s)\b[^>]*>.*?</\1\s*>" % "|".join(_BLOCK_TAGS), re.S | re.I)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL_WITH_TEXT = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+\s+([^\]]*)\]")
_EXTERNAL_BARE = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*\]")
_EMPHASIS = re.compile(r"'{2,}")
_HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$")
_EMPTY_BRACKETS = re.compile(r"\(\s*[,;:]?\s*\)")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:])")
_SPACES = re.compile(r"[ \t\u00a0]+")
_LANG_LINK = re.compile(r"^[a-z]{2,3}(-[a-z]+)?:")


def _template(match: re.Match) -> str:
    """A template's readable text for the few that carry prose ({{convert}}, {{lang}}), else nothing."""
    parts = [p.strip() for p in match.group(0)[2:-2].split("|")]
    name = parts[0].lower()
    if name in {"convert", "cvt"} and len(parts) >= 3:
        return f"{parts[1]} {parts[2]}"
    if name.startswith("lang") and len(parts) >= 3 and name != "langx":
        return parts[-1]
    return ""


def _link(match: re.Match) -> str:
    body = match.group(1)
    lowered = body.lower().lstrip(":")
    if lowered.startswith(_DROPPED_LINK_PREFIXES) or (_LANG_LINK.match(body) and "|" not in body):
        return ""
    return body.rsplit("|", 1)[-1] if "|" in body else body.split("#", 1)[0] or body


def _repeat(pattern: re.Pattern, replacement, text: str) -> str:
    """Apply a substitution until nothing changes, so nested constructs go innermost first."""
    while True:
        text, count = pattern.subn(replacement, text)
        if not count:
            return text


def _inline(text: str) -> str:
    text = _COMMENT.sub("", text)
    text = _SELF_CLOSING_REF.sub("", text)
    text = _BLOCKS.sub("", text)
    text = _repeat(_TEMPLATE, _template, text)
    text = _repeat(_TABLE, "", text)
    text = _repeat(_LINK, _link, text)
    text = _EXTERNAL_WITH_TEXT.sub(r"\1", text)
    text = _EXTERNAL_BARE.sub("", text)
    text = _TAG.sub("", text)
    text = _EMPHASIS.sub("", text)
    return html.unescape(text)


def _heading(level: int, title: str) -> str:
    marks = " ".join(["="] * level)
    return f" {marks} {title} {marks} "


def clean_article(title: str, markup: str) -> str:
    """One article's plain text: a " = Title = " line, then headings and prose paragraphs."""
    lines: list[tuple[int, str]] = []
    skip_below = 0
    for raw in _inline(markup).splitlines():
        line = _SPACES.sub(" ", raw).strip()
        heading = _HEADING.match(line)
        if heading:
            level, name = len(heading.group(1)), heading.group(2).strip()
            if skip_below and level > skip_below:
                continue
            skip_below = level if name.lower() in _DROPPED_SECTIONS else 0
            if not skip_below and name:
                lines.append((level, _heading(level, name)))
            continue
        if skip_below or not line or line[0] in "*#:;|!{}[]=<" or line.startswith("__"):
            continue
        line = _SPACE_BEFORE_PUNCT.sub(r"\1", _EMPTY_BRACKETS.sub("", line))
        line = _SPACES.sub(" ", line).strip()
        if len(line.split()) >= 5:
            lines.append((0, f" {line} "))
    kept: list[str] = []
    for index, (level, text) in enumerate(lines):
        if level:
            following = next((lvl for lvl, _ in lines[index + 1:] if lvl == 0 or lvl <= level), None)
            if following != 0:
                continue
        kept.append(text)
    return "\n".join([_heading(1, title), *kept]) + "\n"


def articles(dump_bz2: bytes, min_chars: int = 2000) -> list[tuple[str, str]]:
    """`(title, text)` of the main-namespace, non-redirect articles with at least `min_chars` characters, in dump order."""
    root = ET.fromstring(bz2.decompress(dump_bz2))
    ns = {"m": root.tag[1:].split("}")[0]} if root.tag.startswith("{") else {"m": ""}
    prefix = "m:" if ns["m"] else ""
    found = []
    for page in root.iter(f"{{{ns['m']}}}page" if ns["m"] else "page"):
        if page.findtext(f"{prefix}ns", namespaces=ns) != "0" or page.find(f"{prefix}redirect", ns) is not None:
            continue
        title = page.findtext(f"{prefix}title", default="", namespaces=ns).strip()
        markup = page.findtext(f"{prefix}revision/{prefix}text", default="", namespaces=ns)
        text = clean_article(title, markup)
        if len(text) >= min_chars:
            found.append((title, text))
    return found
