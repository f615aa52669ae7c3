"""Browser forms for tools and agents; the services validate again and own every write.

The engine's registries (built-in callables, HTTP methods) come through ``apps.agents.selectors``.
"""

from __future__ import annotations

import json

from django import forms

from apps.agents import selectors as agent_selectors
from apps.agents.models import Agent, ToolKind
from apps.core.bounded_json import JsonRefused, json_loads_bounded


def http_method_choices() -> list[tuple[str, str]]:
    return [(method, method) for method in agent_selectors.tool_http_methods()]


class JSONTextField(forms.CharField):
    """A textarea holding JSON; blank is None."""

    widget = forms.Textarea(attrs={"rows": 6, "class": "mono", "spellcheck": "false"})

    def to_python(self, value):
        value = super().to_python(value)
        if not value or not value.strip():
            return None
        try:
            return json_loads_bounded(value)
        except JsonRefused as exc:
            raise forms.ValidationError(exc.message) from exc

    def prepare_value(self, value):
        if isinstance(value, (dict, list)):
            return json.dumps(value, indent=2, ensure_ascii=False)
        return value


class ToolForm(forms.Form):
    name = forms.CharField(max_length=64, help_text="What the model calls it: letters, digits, _ or -")
    description = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="What it does, in one or two sentences: the library search matches requests against it",
    )
    kind = forms.ChoiceField(choices=ToolKind.choices)
    callable = forms.ChoiceField(required=False, help_text="python: the built-in function it runs")
    url = forms.CharField(
        required=False, max_length=2000,
        help_text=(
            "http: the endpoint; {name} placeholders are filled from the arguments. "
            "Its host must be on the allow-list."
        ),
    )
    method = forms.ChoiceField(choices=http_method_choices, required=False)
    corpus = forms.TypedChoiceField(coerce=int, required=False, help_text="retrieval: the corpus it searches")
    k = forms.IntegerField(
        min_value=1, max_value=20, initial=3, required=False, help_text="retrieval: passages returned"
    )
    parameters = JSONTextField(
        required=False,
        help_text="A JSON schema of type object. Blank: the built-in's own (python) or a query (retrieval).",
    )
    examples = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Optional example requests, one per line: blended into the tool's search vector",
    )
    enabled = forms.BooleanField(required=False, initial=True, help_text="Disabled tools are never offered")

    def __init__(self, *args, callables: list[str], corpora, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["callable"].choices = [("", "—")] + [(name, name) for name in callables]
        self.fields["corpus"].choices = [("", "—")] + [(c.pk, c.name) for c in corpora]

    def service_values(self) -> dict:
        data = self.cleaned_data
        kind = data["kind"]
        if kind == ToolKind.PYTHON:
            config = {"callable": data.get("callable") or data["name"]}
        elif kind == ToolKind.HTTP:
            config = {"url": data.get("url") or "", "method": data.get("method") or "GET"}
        else:
            config = {"corpus_id": data.get("corpus"), "k": data.get("k") or 3}
        examples = [line.strip() for line in (data.get("examples") or "").splitlines() if line.strip()]
        return {
            "name": data["name"], "description": data["description"], "kind": kind, "config": config,
            "parameters": data.get("parameters"), "examples": examples, "enabled": data.get("enabled", False),
        }

    @staticmethod
    def initial_for(tool) -> dict:
        config = tool.config or {}
        return {
            "name": tool.name, "description": tool.description, "kind": tool.kind,
            "callable": config.get("callable", ""), "url": config.get("url", ""),
            "method": config.get("method", "GET"),
            "corpus": config.get("corpus_id"), "k": config.get("k", 3), "parameters": tool.parameters,
            "examples": "\n".join(tool.examples or []), "enabled": tool.enabled,
        }


class AgentForm(forms.Form):
    name = forms.SlugField(max_length=120, help_text="Also the `model` name on the OpenAI-compatible API")
    description = forms.CharField(max_length=500, required=False)
    model_endpoint = forms.ChoiceField(
        label="Model",
        help_text=(
            "Local models get the JSON tool-call format; OpenAI-compatible endpoints native tool calling"
        ),
    )
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    top_k = forms.IntegerField(min_value=1, max_value=50, help_text=Agent._meta.get_field("top_k").help_text)
    similarity_threshold = forms.FloatField(
        min_value=-1, max_value=1, help_text=Agent._meta.get_field("similarity_threshold").help_text
    )
    max_depth = forms.IntegerField(
        min_value=0, max_value=5, help_text=Agent._meta.get_field("max_depth").help_text
    )
    step_limit = forms.IntegerField(
        min_value=1, max_value=64, help_text=Agent._meta.get_field("step_limit").help_text
    )
    tool_timeout_s = forms.FloatField(min_value=0.1, max_value=600, label="Tool timeout (s)")
    max_output_tokens = forms.IntegerField(min_value=1, max_value=32_768, help_text="Per model call")

    def __init__(self, *args, endpoints, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model_endpoint"].choices = [(e.name, f"{e.name} ({e.kind})") for e in endpoints]

    def values(self) -> dict:
        fields = ("description", "system_prompt", "top_k", "similarity_threshold", "max_depth", "step_limit",
                  "tool_timeout_s", "max_output_tokens")
        return {name: self.cleaned_data[name] for name in fields}


class RunForm(forms.Form):
    request = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "e.g. What is the area of a circle with a radius of 3 m?"}
        ),
        max_length=20_000, label="Request",
    )
