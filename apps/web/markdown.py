"""Answers as HTML: markdown rendered on the server, citation markers as links, then sanitised.

A model's answer is untrusted text (it can repeat whatever a document or a user put in front of it),
so it goes through two independent layers:

1. markdown-it-py with raw HTML off: ``<script>`` and friends come out as escaped text, and its link
   validator refuses ``javascript:``/``vbscript:``/``data:`` URLs;
2. nh3 (the Ammonia sanitiser) on the result, with a short allow-list of tags and attributes: whatever
   slipped through the first layer (an attribute, a scheme, a tag) is removed here.

``[n]`` markers become links to the n-th source (``a.cite``), as the plain-text filter did before, but
never inside code: the marker is an inline rule, and code spans and fenced blocks have no inline rules.
Images are not rendered (the answer would fetch from anywhere); their alt text stays.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import nh3
from django.utils.html import escape
from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

CITATION = re.compile(r"\[(\d{1,3})\]")

ALLOWED_TAGS = frozenset(
    {
        "p", "br", "hr", "strong", "em", "s", "del", "code", "pre", "blockquote",
        "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
        "table", "thead", "tbody", "tr", "th", "td", "a",
    }
)
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title", "class"},
    "code": {"class"},
    "ol": {"start"},
}
# Relative links (the citations' own) and these schemes survive; everything else loses its href.
URL_SCHEMES = frozenset({"http", "https", "mailto"})


def _citation_rule(state: StateInline, silent: bool) -> bool:
    """``[12]`` (not followed by ``(`` or ``[``, which would make it a link) → a citation token."""
    if state.src[state.pos] != "[":
        return False
    match = CITATION.match(state.src, state.pos)
    if match is None:
        return False
    following = state.src[match.end() : match.end() + 1]
    if following in ("(", "["):
        return False
    if not silent:
        token = state.push("citation", "", 0)
        token.meta = {"n": int(match.group(1))}
        token.content = match.group(0)
    state.pos = match.end()
    return True


def _image_as_text(self: Any, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    token = tokens[idx]
    alt = "".join(child.content for child in (token.children or []))
    return escape(alt)


def _render_citation(self: Any, tokens: list[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    token = tokens[idx]
    n = token.meta["n"]
    link: Callable[[int], str | None] | None = env.get("citation_link")
    html = link(n) if link is not None else None
    return html if html is not None else escape(token.content)


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    # `breaks`: a model's single newlines are line breaks, as the plain-text rendering showed them.
    md = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])  # (a table's column alignment is a style attribute: dropped)
    md.inline.ruler.before("link", "citation", _citation_rule)
    md.add_render_rule("citation", _render_citation)
    md.add_render_rule("image", _image_as_text)
    return md


@lru_cache(maxsize=1)
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=set(ALLOWED_TAGS),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        # The content of these goes too, not only the tag (nh3's default list, named here to be explicit).
        clean_content_tags={"script", "style"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def markdown_to_safe_html(text: str, *, citation_link: Callable[[int], str | None] | None = None) -> str:
    """Render ``text`` as markdown and sanitise the HTML. ``citation_link(n)`` returns the HTML of the
    link for ``[n]`` (or None to leave the marker as text)."""
    env: dict[str, Any] = {"citation_link": citation_link}
    html = _parser().render(str(text or ""), env)
    return _cleaner().clean(html)


def answer_html(answer: str, citations: list[Mapping[str, Any]] | None, *, url_for: Callable[[Mapping], str]) -> str:
    """The answer as safe HTML with each ``[n]`` a link (``a.cite``) to the passage it cites."""
    by_n: dict[int, Mapping[str, Any]] = {}
    for citation in citations or []:
        try:
            by_n[int(citation["n"])] = citation
        except (KeyError, TypeError, ValueError):
            continue

    def link(n: int) -> str | None:
        citation = by_n.get(n)
        if citation is None:
            return None
        title = escape(citation.get("document_title") or "source")
        return f'<a class="cite" href="{escape(url_for(citation))}" title="{title}">[{n}]</a>'

    return markdown_to_safe_html(answer, citation_link=link)
