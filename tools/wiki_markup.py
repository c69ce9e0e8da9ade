"""A small MediaWiki markup stripper for the demo corpus (no mwparserfromhell dependency).

Good enough for encyclopedia prose: templates, tables, refs, comments, files and categories are removed,
links keep their visible text, headings stay as plain lines, trailing reference sections are dropped.
"""

from __future__ import annotations

import re

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_DROP_TAGS = re.compile(r"<(math|gallery|timeline|score|syntaxhighlight|source|nowiki)[^>]*>.*?</\1>", re.S | re.I)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXT_LINK = re.compile(r"\[(?:https?:)?//[^\s\]]+(?:\s([^\]]*))?\]")
_EMPHASIS = re.compile(r"'{2,5}")
_HEADING = re.compile(r"^(={2,6})\s*(.*?)\s*\1\s*$", re.M)
_LIST = re.compile(r"^[*#:;]+\s*", re.M)
_MAGIC = re.compile(r"__[A-Z]+__")
_DROP_LINK_PREFIXES = ("file:", "image:", "category:", "media:")
_INTERWIKI = re.compile(r"^[a-z]{2,3}(-[a-z]+)?:")
END_SECTIONS = ("References", "External links", "See also", "Notes", "Further reading", "Bibliography", "Sources")


def _nested(pattern: re.Pattern, text: str, repl="") -> str:
    """Remove innermost matches until none remain (templates and tables nest)."""
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return text
        text = new


def _link(match: re.Match) -> str:
    inner = match.group(1)
    target = inner.split("|", 1)[0].strip().lower()
    if target.startswith(_DROP_LINK_PREFIXES) or _INTERWIKI.match(target):
        return ""
    return inner.rsplit("|", 1)[-1]


def strip_wiki_markup(text: str) -> str:
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _DROP_TAGS.sub("", text)
    text = _nested(_TEMPLATE, text)
    text = _nested(_TABLE, text)
    text = _nested(_LINK, text, _link)
    text = _EXT_LINK.sub(lambda m: m.group(1) or "", text)
    text = _TAG.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = _MAGIC.sub("", text)
    cut = re.search(r"^={2,6}\s*(%s)\s*={2,6}\s*$" % "|".join(END_SECTIONS), text, re.M)
    if cut:
        text = text[: cut.start()]
    text = _HEADING.sub(lambda m: m.group(2), text)
    text = _LIST.sub("", text)
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if not ln.startswith(("{|", "|", "!"))]  # stray table rows
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"\(\s*[,;]?\s*\)", "", text)  # "( )" left by removed templates
    return text.strip()
