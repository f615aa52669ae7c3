"""LiteLLM-format price tables: parsing (shared by ``manage.py import_prices``) and the table shipped in the
``litellm`` wheel, loaded on a fresh install so the common remote models are priced out of the box.

The wheel (``litellm==1.110.2``, installed with ``--no-deps`` beside the model packages: Makefile, docker/)
is only a data carrier: its ``litellm/model_prices_and_context_window_backup.json`` is located through the
package metadata (``importlib.metadata``) and read; litellm itself is never imported.

Loading the bundled table (migration ``costs 0010``, ``bootstrap_demo``, ``manage.py load_bundled_prices``)
only adds a price for a model name the price book has no price for at all, as one version dated
``BUNDLED_EFFECTIVE``: it never changes or outdates a price already there (charged or not), so running it
again adds nothing. Newer list prices are imported on purpose with ``import_prices`` (new rows from now on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

LITELLM_DISTRIBUTION = "litellm"
LITELLM_VERSION = "1.110.2"
LITELLM_TABLE = "litellm/model_prices_and_context_window_backup.json"
BUNDLED_EFFECTIVE = datetime(2024, 1, 1, tzinfo=UTC)
TEXT_MODES = {"chat", "completion", "responses"}
MILLION = Decimal(1_000_000)


class PriceTableMissing(Exception):
    """The bundled price table is not installed (the ``litellm`` wheel)."""


def per_mtok(value: Any) -> Decimal | None:
    """USD per token (a JSON number) as USD per 1M tokens, exactly (through ``str``: no binary noise)."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value)) * MILLION
    except InvalidOperation:
        return None


@dataclass(frozen=True)
class PriceEntry:
    model_name: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None
    provider: str
    # The provider's Batch API prices (``input_cost_per_token_batches`` / ``output_cost_per_token_batches``);
    # None when the table has none (the model then cannot take a bulk job as a provider batch).
    batch_input_per_mtok: Decimal | None = None
    batch_output_per_mtok: Decimal | None = None


def price_entries(
    table: dict, *, all_modes: bool = False, only: set[str] | None = None
) -> tuple[list[PriceEntry], int]:
    """The priced entries of a LiteLLM table (chat/completion/responses unless ``all_modes``) and how many
    were skipped for lack of a per-token input and output price."""
    entries, skipped = [], 0
    for name, entry in table.items():
        if name == "sample_spec" or not isinstance(entry, dict) or (only and name not in only):
            continue
        if not all_modes and entry.get("mode") not in TEXT_MODES:
            skipped += 1
            continue
        input_price = per_mtok(entry.get("input_cost_per_token"))
        output_price = per_mtok(entry.get("output_cost_per_token"))
        if input_price is None or output_price is None or len(name) > 200:
            skipped += 1
            continue
        batch_in, batch_out = _batch_prices(entry)
        entries.append(PriceEntry(name, input_price, output_price, per_mtok(entry.get("cache_read_input_token_cost")),
                                  str(entry.get("litellm_provider", ""))[:120], batch_in, batch_out))
    return entries, skipped


def _batch_prices(entry: dict) -> tuple[Decimal | None, Decimal | None]:
    """(input, output) batch prices per 1M tokens; both or neither (a half-known batch price is unknown)."""
    batch_in = per_mtok(entry.get("input_cost_per_token_batches"))
    batch_out = per_mtok(entry.get("output_cost_per_token_batches"))
    return (batch_in, batch_out) if batch_in is not None and batch_out is not None else (None, None)


def bundled_table_path() -> Path:
    """The price table inside the installed ``litellm`` wheel; ``PriceTableMissing`` says how to get it."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(LITELLM_DISTRIBUTION)
    except PackageNotFoundError as exc:
        raise PriceTableMissing(
            "the bundled price table is not installed: "
            f"pip install --no-deps {LITELLM_DISTRIBUTION}=={LITELLM_VERSION} (make install does it), "
            "or import a table with manage.py import_prices FILE"
        ) from exc
    path = Path(str(dist.locate_file(LITELLM_TABLE)))
    if not path.is_file():
        raise PriceTableMissing(f"{LITELLM_DISTRIBUTION} {dist.version} has no {LITELLM_TABLE}")
    return path


def bundled_source() -> str:
    from importlib.metadata import version

    return f"litellm {version(LITELLM_DISTRIBUTION)} price table (bundled)"


@dataclass(frozen=True)
class LoadResult:
    added: int
    already_priced: int
    skipped: int
    source: str


def bundled_prices_load(*, price_model=None) -> LoadResult:
    """Add the bundled table's price for every text model the price book has no price for (idempotent).

    ``price_model``: the migration's historical model (default: ``apps.costs.models.Price``).
    Raises ``PriceTableMissing`` when the wheel is absent."""
    if price_model is None:
        from apps.costs.models import Price as price_model
    path = bundled_table_path()
    table = json.loads(path.read_text())
    entries, skipped = price_entries(table)
    source = bundled_source()
    priced = set(price_model.objects.values_list("model_name", flat=True).distinct())
    new = [entry for entry in entries if entry.model_name not in priced]
    # Migration 0010's historical model predates the batch columns (0012 fills them for its rows).
    has_batch = any(f.name == "batch_input_per_mtok" for f in price_model._meta.get_fields())
    price_model.objects.bulk_create(
        [
            price_model(
                model_name=entry.model_name, effective_from=BUNDLED_EFFECTIVE, input_per_mtok=entry.input_per_mtok,
                output_per_mtok=entry.output_per_mtok, cached_input_per_mtok=entry.cached_input_per_mtok,
                provider=entry.provider, source=source[:200],
                **({"batch_input_per_mtok": entry.batch_input_per_mtok,
                    "batch_output_per_mtok": entry.batch_output_per_mtok} if has_batch else {}),
            )
            for entry in new
        ],
        batch_size=500,
        ignore_conflicts=True,  # another process loading at the same moment
    )
    if has_batch:
        bundled_batch_prices_fill(price_model=price_model, entries=entries)
    return LoadResult(added=len(new), already_priced=len(entries) - len(new), skipped=skipped, source=source)


def bundled_batch_prices_fill(*, price_model=None, entries: list[PriceEntry] | None = None) -> int:
    """Fill the batch prices of price rows loaded from the bundled table before it carried them (costs 0012):
    only rows from the bundled table (their ``source``) with no batch price yet, whose input and output prices
    are still the table's. Nothing a call was charged changes: the batch columns are new information from the
    same table. Returns how many rows were filled."""
    if price_model is None:
        from apps.costs.models import Price as price_model
    if entries is None:
        entries, _ = price_entries(json.loads(bundled_table_path().read_text()))
    by_name = {entry.model_name: entry for entry in entries if entry.batch_input_per_mtok is not None}
    filled = 0
    rows = price_model.objects.filter(source__startswith="litellm ", source__endswith="(bundled)",
                                      batch_input_per_mtok=None, model_name__in=list(by_name))
    for row in rows:
        entry = by_name[row.model_name]
        if (row.input_per_mtok, row.output_per_mtok) != (entry.input_per_mtok, entry.output_per_mtok):
            continue
        filled += price_model.objects.filter(pk=row.pk, batch_input_per_mtok=None).update(
            batch_input_per_mtok=entry.batch_input_per_mtok, batch_output_per_mtok=entry.batch_output_per_mtok)
    return filled
