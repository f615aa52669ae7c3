"""The pages offer exactly the engine's registry names, read through the domain selectors."""

import ast
from pathlib import Path

from apps.agents import selectors as agent_selectors
from apps.rag import selectors as rag_selectors
from apps.web.agent_forms import ToolForm

WEB_PACKAGE = Path(__file__).resolve().parents[3] / "apps" / "web"


def test_it_lists_every_registered_method_strategy_backend_and_retriever():
    from apps.rag.models import Retriever
    from workers.compression import METHODS
    from workers.prompting import STRATEGIES

    names = rag_selectors.pipeline_option_names()
    assert names["compression_method"] == sorted(METHODS)
    assert names["prompting_strategy"] == sorted(STRATEGIES)
    assert "full" in names["attention_backend"]
    assert names["retriever"] == list(Retriever.values)


def test_the_pipeline_form_choices_carry_each_methods_description():
    choices = rag_selectors.pipeline_option_choices()
    names = rag_selectors.pipeline_option_names()
    for field in ("compression_method", "prompting_strategy", "attention_backend"):
        assert [name for name, _ in choices[field]] == names[field]
    assert all(isinstance(about, str) and "\n" not in about for _, about in choices["compression_method"])


def test_the_tool_form_offers_the_engines_http_methods_and_callables():
    from workers.agent.http_tool import METHODS
    from workers.agent.tools import callable_names

    assert agent_selectors.tool_http_methods() == tuple(METHODS)
    assert agent_selectors.tool_callable_names() == callable_names()
    form = ToolForm(callables=agent_selectors.tool_callable_names(), corpora=[])
    assert [value for value, _ in form.fields["method"].choices] == list(METHODS)


def test_no_page_module_imports_the_engine():
    for path in sorted(WEB_PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            assert not any(m == "workers" or m.startswith("workers.") for m in modules), path
