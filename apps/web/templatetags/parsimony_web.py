"""Template helpers: money, search-hit highlighting, citation links, budget banners, form fields."""

from __future__ import annotations

import re

from django import template
from django.urls import reverse
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe

from apps.core.display import seconds as seconds_display
from apps.costs.money_format import usd as usd_display
from apps.web.markdown import answer_html, markdown_to_safe_html

register = template.Library()

WORD = re.compile(r"\w{2,}", re.UNICODE)
STOPWORDS = frozenset("the a an and or of to in on for is are was were be by with what who how why which".split())


@register.filter
def usd(value) -> str:
    """$ amounts readable at every scale: cents for dollars, more digits for the fractions of a cent."""
    return usd_display(value)


def query_terms(query: str) -> list[str]:
    terms = {t.lower() for t in WORD.findall(query or "")}
    return sorted((t for t in terms if t not in STOPWORDS), key=len, reverse=True)


@register.filter
def highlight(text, query) -> str:
    """Escape ``text``, then wrap the query's words in <mark>. Matching runs on the raw text and
    each piece is escaped separately, so a term can never match inside an HTML entity."""
    text = str(text or "")
    terms = query_terms(str(query or ""))
    if not terms:
        return escape(text)
    # A term marks the whole word it starts: "zebra" marks "Zebras".
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in terms) + r")\w*", re.IGNORECASE)
    out, last = [], 0
    for match in pattern.finditer(text):
        out.append(escape(text[last : match.start()]))
        out.append(f"<mark>{escape(match.group(0))}</mark>")
        last = match.end()
    out.append(escape(text[last:]))
    return mark_safe("".join(out))


def citation_url(citation: dict) -> str:
    chunk_id = citation.get("chunk_id")
    url = reverse("document-detail", args=[citation.get("document_id")])
    return f"{url}?chunk={chunk_id}#chunk-{chunk_id}"


@register.filter
def cite_url(citation: dict) -> str:
    return citation_url(citation)


@register.filter
def with_citations(answer, citations) -> str:
    """The answer rendered from markdown and sanitised (apps.web.markdown), each [n] a link to the
    passage it cites; raw HTML in the answer is shown as text, never run."""
    return mark_safe(answer_html(str(answer or ""), citations, url_for=citation_url))


@register.filter
def markdown(text) -> str:
    """Markdown rendered and sanitised, without citation links (the agents' answers)."""
    return mark_safe(markdown_to_safe_html(str(text or "")))


@register.filter
def seconds(milliseconds) -> str:
    """A duration in ms as seconds: "62.9 s", under a second "0.84 s"."""
    return seconds_display(milliseconds)


@register.filter
def percent_of(part, whole) -> float:
    try:
        whole = float(whole)
        return round(100 * float(part) / whole, 1) if whole else 0.0
    except (TypeError, ValueError):
        return 0.0


@register.filter
def get_item(mapping, key):
    return (mapping or {}).get(key)


@register.inclusion_tag("web/_budget_banners.html", takes_context=True)
def budget_banners(context) -> dict:
    request = context.get("request")
    team = getattr(request, "team", None)
    if team is None:
        return {"alerts": []}
    from apps.costs.selectors import team_budget_alerts

    return {"alerts": team_budget_alerts(team=team), "request": request}


@register.inclusion_tag("web/_field.html")
def field(bound_field, **attrs) -> dict:
    return {"field": bound_field, **attrs}


@register.simple_tag
def status_badge(status: str) -> str:
    css = {"ready": "succeeded", "processing": "running", "queued": "queued"}.get(status, status)
    return format_html('<span class="status status-{}">{}</span>', css, status)


QUALITY_TITLES = {
    "grounded": "Its sentences are supported by the retrieved passages",
    "weak": "Only part of it is supported by the retrieved passages",
    "unsupported": "The retrieved passages do not support it",
    "degenerate": "The model looped (stopped by the degeneration guard) or said nothing",
    "abstained": "Retrieval found nothing close enough: not found in the documents, nothing generated",
}


@register.simple_tag
def quality_badge(run) -> str:
    """The run's answer-quality label as a badge, its meaning in the title (docs/quality.md)."""
    label = run.quality_label
    support = f" (support {round(100 * run.support)}%)" if run.support is not None else ""
    return format_html('<span class="status quality-{}" title="{}{}">{}</span>', label,
                       QUALITY_TITLES.get(label, label), support, label)


@register.filter
def percent_share(value) -> str:
    """A 0..1 share as a whole percent ("—" for none)."""
    return "—" if value is None else f"{round(100 * float(value))}%"


@register.simple_tag(takes_context=True)
def nav_current(context, names: str) -> str:
    """aria-current="page" on the nav link whose section (space-separated url names) is open."""
    request = context.get("request")
    match = getattr(request, "resolver_match", None)
    if match is not None and match.url_name in names.split():
        return mark_safe('aria-current="page"')
    return ""
