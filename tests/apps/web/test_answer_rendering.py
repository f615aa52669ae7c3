"""Answers as HTML: markdown rendered on the server, [n] as links to the sources, hostile input made
inert; latency in seconds on the run pages."""

from __future__ import annotations

import re

import pytest

from apps.agents.models import AgentRun
from apps.rag.models import QueryRun
from apps.web.markdown import _cleaner, markdown_to_safe_html
from apps.web.templatetags.parsimony_web import seconds, with_citations

CITATIONS = [
    {"n": 1, "document_id": 7, "chunk_id": 70, "document_title": "Zebra facts"},
    {"n": 2, "document_id": 8, "chunk_id": 80, "document_title": 'Evil "title" <b>'},
]

HOSTILE = """Stripes [1].

<script>alert('x')</script>
<img src=x onerror="alert(1)">
<a href="javascript:alert(2)" onclick="alert(3)">raw link</a>
[click me](javascript:alert(4)) [again](JaVaScRiPt:alert(5)) [data](data:text/html;base64,PHNjcmlwdD4=)
<div onmouseover="alert(6)">hover</div>
![pic](http://tracker.example/x.png "t")
"""


def _tags_and_attrs(html: str) -> tuple[set[str], set[str]]:
    tags = {m.lower() for m in re.findall(r"<\s*([a-zA-Z][a-zA-Z0-9]*)", html)}
    attrs = {m.lower() for m in re.findall(r"\s([a-zA-Z-]+)\s*=", " ".join(re.findall(r"<[^>]*>", html)))}
    return tags, attrs


def test_it_renders_markdown_emphasis_lists_and_code_blocks():
    html = str(
        with_citations("Zebras **have** stripes [1].\n\n- one\n- two\n\n```python\nx = 1 < 2\n```\n", CITATIONS)
    )
    assert "<strong>have</strong>" in html
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in html
    assert '<pre><code class="language-python">x = 1 &lt; 2\n</code></pre>' in html
    assert "**" not in html and "```" not in html


def test_citation_markers_link_to_their_source_and_unknown_ones_stay_text():
    html = str(with_citations("See [1], [2] and [9].", CITATIONS))
    assert '<a class="cite" href="/documents/7/?chunk=70#chunk-70" title="Zebra facts"' in html
    assert 'href="/documents/8/?chunk=80#chunk-80" title="Evil &quot;title&quot; &lt;b&gt;"' in html
    assert ">[9]</a>" not in html and "[9]" in html


def test_a_marker_inside_code_is_not_a_link_and_a_markdown_link_is_not_a_marker():
    html = str(with_citations("`x[1]` and [1](https://example.org/a)", CITATIONS))
    assert "<code>x[1]</code>" in html
    assert '<a href="https://example.org/a" rel="noopener noreferrer nofollow">1</a>' in html
    assert 'class="cite"' not in html


def test_single_newlines_stay_line_breaks():
    assert str(with_citations("one\ntwo", [])) == "<p>one<br>\ntwo</p>\n"


def test_a_hostile_answer_renders_inert():
    html = str(with_citations(HOSTILE, CITATIONS))
    tags, attrs = _tags_and_attrs(html)
    assert tags <= {"p", "a", "br"}, tags
    assert attrs <= {"href", "title", "class", "rel"}, attrs
    assert not re.search(r'<a\b[^>]*href="\s*(javascript|data):', html, re.I)
    assert "&lt;script&gt;" in html  # shown as text, never run
    assert "tracker.example" not in html  # images are not fetched


def test_the_sanitiser_alone_strips_scripts_handlers_and_bad_schemes():
    # The second layer, on HTML the markdown layer would never produce.
    dirty = (
        '<p onclick="x()">hi<script>alert(1)</script></p><a href="javascript:alert(1)">j</a>'
        '<a href="/documents/1/" class="cite" style="color:red">ok</a><iframe src="https://e.org"></iframe>'
        '<svg><g onload="alert(1)"></g></svg><img src=x onerror=alert(1)>'
    )
    clean = _cleaner().clean(dirty)
    assert clean == (
        '<p>hi</p><a rel="noopener noreferrer nofollow">j</a>'
        '<a href="/documents/1/" class="cite" rel="noopener noreferrer nofollow">ok</a>'
    )


def test_agents_answers_render_markdown_without_citation_links():
    assert markdown_to_safe_html("**40** [1]") == "<p><strong>40</strong> [1]</p>\n"


@pytest.mark.parametrize(
    ("ms", "shown"),
    [
        (62931, "62.9 s"), (840, "0.84 s"), (1000, "1.0 s"), (0, "0 s"), (4, "<0.01 s"), (None, "—"),
        (1234567, "1,234.6 s"),
    ],
)
def test_latency_is_shown_in_seconds(ms, shown):
    assert seconds(ms) == shown


@pytest.mark.django_db
def test_the_run_page_shows_the_rendered_answer_and_latency_in_seconds(client, alice, team_a):
    client.force_login(alice)
    run = QueryRun.objects.create(
        team=team_a, user=alice, question="Stripes?", status="succeeded", answer=HOSTILE + "\n`code`",
        citations=CITATIONS, latency_ms=62931,
    )
    for url in (f"/ask/runs/{run.pk}/", f"/ask/runs/{run.pk}/live/"):
        page = client.get(url).content.decode()
        answer = page[page.index('id="answer-text"') : page.index('id="citations-h"')]
        assert "<code>code</code>" in answer and 'class="cite"' in answer
        assert "<script" not in answer and "&lt;script&gt;" in answer
        assert not re.search(r"<[^>]+\son[a-z]+\s*=", answer)
        assert not re.search(r'<a\b[^>]*href="\s*javascript:', answer, re.I)
        assert "<dt>Latency</dt><dd>62.9 s</dd>" in page
        assert "62931 ms" not in page


@pytest.mark.django_db
def test_the_agent_run_page_renders_the_answer_and_latency_in_seconds(client, alice, team_a, make_agent):
    client.force_login(alice)
    run = AgentRun.objects.create(
        team=team_a, agent=make_agent(team_a), request="hi", status="succeeded",
        answer="The total is **40**.\n\n<script>alert(1)</script>", latency_ms=840,
    )
    page = client.get(f"/agents/runs/{run.pk}/").content.decode()
    assert "The total is <strong>40</strong>." in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "<dt>Latency</dt><dd>0.84 s</dd>" in page
