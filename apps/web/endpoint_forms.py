"""The model endpoint form (team pages): an OpenAI-compatible URL, model, API key, tokenizer, price."""

from __future__ import annotations

from decimal import Decimal

from django import forms

PRICE_HELP = "USD per 1M tokens"


class EndpointForm(forms.Form):
    name = forms.CharField(
        max_length=120, help_text="What pipelines, agents and the OpenAI-compatible API call it, e.g. gpt-4o-mini"
    )
    base_url = forms.CharField(
        max_length=200, label="Base URL",
        help_text="The OpenAI-compatible API's root, e.g. https://api.openai.com/v1 or http://vllm:8000/v1",
        widget=forms.URLInput(attrs={"inputmode": "url", "spellcheck": "false"}),
    )
    model = forms.CharField(max_length=200, help_text="The model id sent in each request, e.g. gpt-4o-mini")
    api_key = forms.CharField(
        required=False, label="API key", strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password", "spellcheck": "false"}),
        help_text="Stored encrypted; never shown again. Blank: no key",
    )
    clear_api_key = forms.BooleanField(required=False, label="Remove the stored API key")
    tokenizer = forms.CharField(
        required=False, max_length=500,
        help_text="A Hugging Face tokenizer on this server (name or folder) that counts prompts exactly for "
        "reservations. Blank: tiktoken for OpenAI models, else a safe byte bound",
    )
    price_name = forms.CharField(
        required=False, max_length=200, label="Price from the price book",
        help_text="Type to search the price book (e.g. gpt-4o, claude, gemini, mistral); or enter prices below",
        widget=forms.TextInput(attrs={"list": "price-options", "autocomplete": "off", "spellcheck": "false"}),
    )
    input_per_mtok = forms.DecimalField(
        required=False, min_value=Decimal(0), max_digits=20, decimal_places=6, label="Input price",
        help_text=PRICE_HELP + " (entering prices uses them instead of the price book)",
    )
    output_per_mtok = forms.DecimalField(
        required=False, min_value=Decimal(0), max_digits=20, decimal_places=6, label="Output price",
        help_text=PRICE_HELP,
    )
    cached_input_per_mtok = forms.DecimalField(
        required=False, min_value=Decimal(0), max_digits=20, decimal_places=6, label="Cached input price",
        help_text=PRICE_HELP + "; blank: same as input",
    )
    batch_input_per_mtok = forms.DecimalField(
        required=False, min_value=Decimal(0), max_digits=20, decimal_places=6, label="Batch input price",
        help_text=PRICE_HELP + " through the provider's Batch API (with entered prices; both or neither)",
    )
    batch_output_per_mtok = forms.DecimalField(
        required=False, min_value=Decimal(0), max_digits=20, decimal_places=6, label="Batch output price",
        help_text=PRICE_HELP + " through the provider's Batch API",
    )
    context_window = forms.IntegerField(
        min_value=256, max_value=10_000_000, initial=128_000, label="Context window (tokens)",
        help_text="Prompts that cannot fit with the output cap are refused before anything is spent",
    )
    max_output_tokens = forms.IntegerField(
        min_value=1, max_value=1_000_000, initial=1024, label="Output cap (tokens)",
        help_text="The most tokens one answer may use: every call sends it, and budgets reserve it",
    )
    enabled = forms.BooleanField(required=False, initial=True)
    batch_api = forms.BooleanField(
        required=False, label="Offers the Batch API",
        help_text="The provider serves the OpenAI Batch API (/v1/files, /v1/batches): bulk jobs may run there at "
        "the price's batch prices, answered within 24 hours",
    )

    def __init__(self, *args, editing: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not editing:
            del self.fields["clear_api_key"]

    def clean(self):
        data = super().clean()
        entered = data.get("input_per_mtok") is not None or data.get("output_per_mtok") is not None
        if not entered and not (data.get("price_name") or "").strip():
            self.add_error("price_name", "Choose a price from the price book, or enter the input and output prices.")
        return data
