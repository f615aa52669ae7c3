"""Browser forms: parse and check input; every write still goes through a service."""

from __future__ import annotations

import json
from decimal import Decimal

from django import forms
from django.contrib.auth.forms import UserCreationForm

from apps.accounts.models import Role, Scope
from apps.core.bounded_json import JsonRefused, json_loads_bounded
from apps.corpora.models import INDEX_TYPE_CHOICES
from apps.costs.models import BudgetPeriod, BudgetScope
from apps.rag.cascade import MAX_TIERS
from apps.rag.models import Pipeline, Retriever

# --------------------------------------------------------------------------- team


class InvitationForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER, help_text="The role the new member gets")
    note = forms.CharField(
        max_length=200, required=False, label="For whom (optional)", help_text="A reminder for admins, e.g. a name"
    )
    valid_days = forms.IntegerField(
        min_value=1, max_value=30, initial=7, label="Valid for (days)", help_text="The link stops working after this"
    )

    def __init__(self, *args, can_invite_owner: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not can_invite_owner:
            self.fields["role"].choices = [c for c in Role.choices if c[0] != Role.OWNER]


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class SignUpForm(UserCreationForm):
    email = forms.EmailField(required=False, help_text="Optional: for budget alerts if you become an admin")

    class Meta(UserCreationForm.Meta):
        fields = ("username", "email")


SCOPE_HELP = {
    Scope.READ: "read: list corpora, documents, pipelines, usage",
    Scope.QUERY: "query: ask questions and search (spends budget)",
    Scope.INGEST: "ingest: upload and delete documents",
    Scope.ADMIN: "admin: everything, including pipelines and budgets",
}


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=120, help_text="To recognise the key later, e.g. the app that uses it")
    scopes = forms.MultipleChoiceField(
        choices=[(s, SCOPE_HELP[s]) for s in Scope.values],
        widget=forms.CheckboxSelectMultiple,
        initial=[Scope.READ, Scope.QUERY],
        help_text="What the key may do; give it no more than the app needs",
    )
    expires_in_days = forms.IntegerField(
        required=False, min_value=1, max_value=3650, label="Expires after (days, optional)",
        help_text="Blank: never expires (revoke it when it is no longer needed)",
    )


# --------------------------------------------------------------------------- corpora


class CorpusForm(forms.Form):
    name = forms.CharField(max_length=120)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    chunk_tokens = forms.IntegerField(
        min_value=16, max_value=4096, initial=256, label="Chunk size (tokens)",
        help_text="Passages are this long; every retrieved passage adds about this many tokens to a prompt",
    )
    overlap_tokens = forms.IntegerField(
        min_value=0, max_value=1024, initial=32, label="Overlap (tokens)",
        help_text="Tokens shared by neighbouring chunks, so an answer is not cut in two",
    )
    index_type = forms.ChoiceField(
        choices=INDEX_TYPE_CHOICES, initial="auto", label="Vector index",
        help_text="auto picks exact search for small corpora and an approximate index for large ones",
    )


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, list | tuple):
            if not data and self.required:
                raise forms.ValidationError(self.error_messages["required"], code="required")
            return [single(item, initial) for item in data]
        return [single(data, initial)]


class UploadForm(forms.Form):
    files = MultipleFileField(
        label="Files",
        help_text="PDF, Word, HTML, Markdown or text; .jsonl/.csv files are imported as one document per record",
    )


class SearchForm(forms.Form):
    q = forms.CharField(max_length=500, label="Search this corpus")
    retriever = forms.ChoiceField(
        choices=[(value, label) for value, label in Retriever.choices if value != Retriever.NONE],
        initial=Retriever.HYBRID, required=False,
    )


# --------------------------------------------------------------------------- ask


class AskForm(forms.Form):
    pipeline = forms.ModelChoiceField(queryset=Pipeline.objects.none(), empty_label=None)
    question = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=4000)

    def __init__(self, *args, pipelines=None, **kwargs):
        super().__init__(*args, **kwargs)
        if pipelines is not None:
            self.fields["pipeline"].queryset = pipelines


# --------------------------------------------------------------------------- pipelines

# Cost effects of the options whose model field has no help_text of its own.
PIPELINE_EXTRA_HELP = {
    "name": "Lowercase letters, digits and dashes.",
    "description": "For people; no effect on cost.",
    "corpora": "Searched together; more corpora give more candidates but the prompt still gets top k passages. "
    "At least one, unless the retriever is none (a retrieval-free pipeline) or a fixed context is set.",
    "model_endpoint": "The model that writes the answer: its price per token (or per device-second) "
    "multiplies every other choice here.",
    "prompting_strategy": "How the passages are laid out in the prompt; naive sends them all in one prompt "
    "(the baseline the savings are measured against); extractive_answer generates nothing: the answer is the "
    "best sentence of the passages with its citation, for the price of a sentence embedding.",
    "attention_backend": "How a local model attends over the context: cheaper backends cut device-seconds "
    "on long prompts; no effect on remote endpoints.",
    "system_prompt": "Sent with every question: its tokens are paid on every query.",
    "fixed_context": "With a fixed context retrieval is skipped: prefill it once (below, after saving) and each "
    "question pays only for its own tokens plus the cached context.",
    "fixed_context_corpus": "Used when the text above is empty: the corpus's documents in upload order.",
    "prompting_options": 'A JSON object, e.g. {"top_k": 2, "answer_mode": "recompute"} for superposition '
    "(paths kept, and whether the kept documents are recomputed for the answer), "
    '{"sentences": 2} for extractive_answer (sentences quoted); blank for the defaults.',
    "attention_options": 'A JSON object, e.g. {"keep_fraction": 0.1} for squeezed or {"top_k": 64, "index": "hnsw"} '
    "for retrieval; blank for the backend's defaults.",
}


def endpoint_label(endpoint) -> str:
    """The model's name, kind and current price: the first thing that decides a query's cost."""
    from apps.core.errors import ServiceError
    from apps.costs.services import price_current

    try:
        price = price_current(model_name=endpoint.price_name)
    except ServiceError:
        return f"{endpoint.name} ({endpoint.kind}, no price yet)"
    if price.per_gpu_second or price.per_cpu_second:
        per_hour = [
            f"${value * 3600:.2f}/{unit}-hour"
            for value, unit in ((price.per_gpu_second, "GPU"), (price.per_cpu_second, "CPU"))
            if value
        ]
        return f"{endpoint.name} ({endpoint.kind}, {' or '.join(per_hour)})"
    return (
        f"{endpoint.name} ({endpoint.kind}, ${price.input_per_mtok.normalize():f} in / "
        f"${price.output_per_mtok.normalize():f} out per 1M tokens)"
    )


def pipeline_help(name: str) -> str:
    field = Pipeline._meta.get_field(name)
    model_help = str(getattr(field, "help_text", "") or "").replace("`", "")
    extra = PIPELINE_EXTRA_HELP.get(name, "")
    return " ".join(part for part in (model_help.rstrip(".") + "." if model_help else "", extra) if part)


CASCADE_HELP = (
    "Make this pipeline a cascade: its tiers (other pipelines of the team, cheapest first, 2 to 8) answer in "
    "turn until the scorer accepts an answer, so most questions cost what the cheap tier costs and only the "
    "doubtful ones pay for the dearer tiers. All blank: an ordinary pipeline. A cascade's own model, corpora and "
    "retrieval options are not used: each tier answers as it would alone. Changing the tiers removes the scorer "
    "(fit it again from an evaluation job that ran every tier)."
)


class TiersWidget(forms.MultiWidget):
    """One select per tier position, in order (no script needed to order them)."""

    def __init__(self, count: int):
        super().__init__([forms.Select(attrs={"aria-label": f"Tier {i + 1}"}) for i in range(count)])

    def decompress(self, value):
        ids = [str(v) for v in (value or [])]
        return ids + [""] * (len(self.widgets) - len(ids))


class TiersField(forms.MultiValueField):
    """A cascade's tiers as an ordered list of pipeline ids (blanks skipped); the rules are the service's."""

    def __init__(self, count: int, **kwargs):
        fields = [forms.ChoiceField(required=False) for _ in range(count)]
        super().__init__(fields=fields, require_all_fields=False, required=False, widget=TiersWidget(count),
                         **kwargs)

    def set_choices(self, choices: list[tuple[str, str]]) -> None:
        for field, widget in zip(self.fields, self.widget.widgets, strict=True):
            field.choices = choices
            widget.choices = choices

    def compress(self, data_list) -> list[int]:
        return [int(value) for value in data_list or [] if value]


class PipelineForm(forms.Form):
    name = forms.SlugField(max_length=120)
    description = forms.CharField(max_length=500, required=False)
    model_endpoint = forms.ChoiceField(label="Model")
    corpora = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple, required=False)
    retriever = forms.ChoiceField(choices=Retriever.choices)
    top_k = forms.IntegerField(min_value=1, max_value=100, label="Passages (top k)")
    compression_method = forms.ChoiceField(label="Compression")
    compression_target = forms.FloatField(label="Compression target")
    prompting_strategy = forms.ChoiceField(label="Prompting")
    prompting_options = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        required=False,
        label="Prompting options (JSON)",
    )
    attention_backend = forms.ChoiceField(label="Attention")
    max_output_tokens = forms.IntegerField(min_value=1, max_value=32768, label="Max answer tokens")
    history_token_budget = forms.IntegerField(min_value=0, max_value=32768, initial=512, required=False,
                                              label="Conversation history (tokens)")
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    fixed_context = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8}), required=False, strip=False, label="Fixed context (text)"
    )
    fixed_context_corpus = forms.ChoiceField(required=False, label="Fixed context (corpus)")
    attention_options = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        required=False,
        label="Attention options (JSON)",
    )
    decoding_options = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        required=False,
        label="Decoding options (JSON)",
    )
    abstain_below = forms.FloatField(
        min_value=0, max_value=1, required=False, label="Abstain below retrieval confidence",
        widget=forms.NumberInput(attrs={"step": "0.05"}),
    )
    answer_cache = forms.BooleanField(required=False, label="Answer cache")
    cascade = TiersField(MAX_TIERS, label="Cascade tiers (cheapest first)")

    def __init__(
        self,
        *args,
        endpoints=(),
        corpora=(),
        registry: dict[str, list[tuple[str, str]]] | None = None,
        tiers=(),
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            field.help_text = pipeline_help(name)
        self.fields["cascade"].help_text = CASCADE_HELP
        self.fields["cascade"].set_choices([("", "—")] + [(str(p.pk), p.name) for p in tiers])
        self.fields["model_endpoint"].choices = [(e.name, endpoint_label(e)) for e in endpoints]
        self.fields["corpora"].choices = [(str(c.pk), c.name) for c in corpora]
        self.fields["fixed_context_corpus"].choices = [("", "— none —")] + [(str(c.pk), c.name) for c in corpora]
        # The registries' names as choices; each method's own one-line description in the help.
        for name, described in (registry or {}).items():
            if name in self.fields:
                self.fields[name].choices = [(value, value) for value, _ in described]
                # Rendered as a list inside the help text (so it is part of aria-describedby).
                self.fields[name].options_help = [(value, text) for value, text in described if text]

    def clean_history_token_budget(self) -> int:
        value = self.cleaned_data.get("history_token_budget")
        return Pipeline._meta.get_field("history_token_budget").default if value is None else value

    def clean_attention_options(self) -> dict:
        return _json_object(self.cleaned_data.get("attention_options"), "Attention options", '{"keep_fraction": 0.1}')

    def clean_decoding_options(self) -> dict:
        return _json_object(self.cleaned_data.get("decoding_options"), "Decoding options",
                            '{"repetition_penalty": 1.1}')

    def clean_prompting_options(self) -> dict:
        return _json_object(self.cleaned_data.get("prompting_options"), "Prompting options", '{"top_k": 2}')

    def values(self) -> dict:
        """The pipeline options (the corpus of the fixed context as its id: the view resolves it in the team)."""
        data = dict(self.cleaned_data)
        data.pop("name"), data.pop("model_endpoint"), data.pop("corpora")
        return data


def _json_object(raw: str | None, what: str, example: str) -> dict:
    """A form field's JSON text -> a dict ({} when blank), or a field error saying what is wrong."""
    raw = (raw or "").strip()
    if not raw:
        return {}
    try:
        options = json_loads_bounded(raw)
    except JsonRefused as exc:
        cause = exc.__cause__
        if isinstance(cause, json.JSONDecodeError):
            raise forms.ValidationError(
                f"Not valid JSON: {cause.msg} (line {cause.lineno}, column {cause.colno})."
            ) from exc
        raise forms.ValidationError(f"{exc.message[0].upper()}{exc.message[1:]}.") from exc
    if not isinstance(options, dict):
        raise forms.ValidationError(f"{what} must be a JSON object, e.g. {example}.")
    return options


def options_text(options: dict | None) -> str:
    """How a pipeline's attention or prompting options read in the form's JSON fields ("" for none)."""
    return json.dumps(options, indent=None, sort_keys=True) if options else ""


# --------------------------------------------------------------------------- budgets


class BudgetForm(forms.Form):
    scope = forms.ChoiceField(choices=BudgetScope.choices, help_text="Whose spending the budget limits")
    user = forms.ChoiceField(required=False, label="Member (for a user budget)")
    api_key = forms.ChoiceField(required=False, label="API key (for a key budget)")
    period = forms.ChoiceField(choices=BudgetPeriod.choices, help_text="When the counter starts again")
    hard_limit = forms.DecimalField(
        min_value=Decimal(0), max_digits=24, decimal_places=6, label="Hard limit (USD)",
        help_text="A request that could go over it is refused before any work runs",
    )
    soft_limit_percent = forms.IntegerField(
        min_value=1, max_value=100, initial=80, label="Soft limit (%)",
        help_text="Past this share of the hard limit admins get an e-mail and everyone a banner",
    )
    enabled = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, members=(), api_keys=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["user"].choices = [("", "—")] + [(str(m.user_id), m.user.username) for m in members]
        self.fields["api_key"].choices = [("", "—")] + [(str(k.pk), f"{k.name} ({k.prefix}…)") for k in api_keys]

    def clean(self):
        data = super().clean()
        scope = data.get("scope")
        if scope == BudgetScope.USER and not data.get("user"):
            self.add_error("user", "Choose the member this budget limits.")
        if scope == BudgetScope.API_KEY and not data.get("api_key"):
            self.add_error("api_key", "Choose the API key this budget limits.")
        return data
