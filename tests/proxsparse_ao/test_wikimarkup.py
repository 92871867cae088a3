"""The MediaWiki cleaner keeps prose and headings (WikiText style) and drops markup, deterministically."""

from __future__ import annotations

from proxsparse_ao.wikimarkup import clean_article

MARKUP = """{{Infobox thing|name={{nested|x}}|size=3}}
[[File:Pic.jpg|thumb|A caption with a [[link]] inside]]
'''Albedo''' is the [[diffuse reflection|diffuse reflectivity]] of a [[surface]].<ref name="a">{{cite web|url=x}}</ref> It is about {{convert|15|C}} here.<ref name="b"/>
<!-- a hidden comment -->
==History==
The term was introduced by [[Johann Heinrich Lambert]] in his 1760 work ''[[Photometria]]'' ([http://example.org a book]).
{| class="wikitable"
| cell || {{template}}
|}
* a list item that is dropped
==Empty section==
* only a list here
==References==
The references section is dropped even when it has prose in it.
[[Category:Optics]]
"""


def test_prose_links_and_headings_survive_in_wikitext_style():
    text = clean_article("Albedo", MARKUP)
    assert text.splitlines() == [
        " = Albedo = ",
        " Albedo is the diffuse reflectivity of a surface. It is about 15 C here. ",
        " = = History = = ",
        " The term was introduced by Johann Heinrich Lambert in his 1760 work Photometria (a book). ",
    ]


def test_no_markup_is_left():
    text = clean_article("Albedo", MARKUP)
    for marker in ("[[", "]]", "{{", "}}", "<ref", "'''", "{|", "Category", "caption", "hidden"):
        assert marker not in text


def test_cleaning_is_deterministic():
    assert clean_article("Albedo", MARKUP) == clean_article("Albedo", MARKUP)
