"""PostgreSQL hot path: budget reservation, settlement and the ledger row, one statement each.

Every function here runs exactly one SQL statement (a data-modifying CTE). Outside a transaction
that statement is its own transaction (autocommit), so a reservation costs one round trip and a
ledger row plus its settlement another, instead of BEGIN / several statements / COMMIT. Inside a
caller's transaction they simply join it.

The guarantees are the ORM path's (``apps.costs.services.budgets`` and ``.ledger``), kept inside
the statement:

- reserve: the current window of every applicable budget is locked ``FOR UPDATE`` in primary-key
  order (the same order everywhere: no deadlocks), every window is checked
  (``spent + reserved + estimate <= hard_limit``) on the locked (latest) row versions, and only
  when all fit are ``reserved`` bumped and the reservation and its window links inserted. A
  refusal changes nothing and returns the first blocking window's numbers for the 402. A missing
  window (the first request of a period) changes nothing either; the caller creates it and runs
  the statement again.
- settle: the reservation row is locked first, then its windows in primary-key order; a hold that
  is still ``held`` is swapped for the actual cost, one that expired or was released books the
  spend only, one already settled books nothing. The ledger row, when given, is inserted by the
  same statement, so it commits with its spend.
- an optional price check makes a statement do nothing (and say so) unless the given Price row is
  still the one in force for its model at ``at`` with the same values: this is what makes the
  per-process price cache in ``services.prices.price_for_call`` safe.

Table and column names come from the models' ``_meta``; values are bound as psycopg parameters.
SQLite does not use this module: the services keep the ORM code, and ``services.backend`` the
process lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache

from django.db import connection, models

from apps.costs.models import (
    Budget,
    BudgetPeriod,
    BudgetScope,
    BudgetWindow,
    Price,
    Reservation,
    ReservationStatus,
    UsageRecord,
)

# --------------------------------------------------------------------------- SQL building blocks


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


def _table(model) -> str:
    return _qn(model._meta.db_table)


def _col(model, field_name: str) -> str:
    return _qn(model._meta.get_field(field_name).column)


def _insert_fields(model) -> list[models.Field]:
    return [field for field in model._meta.concrete_fields if not field.primary_key]


def _placeholder(field: models.Field, name: str) -> str:
    # Strings stay untyped literals (the column's own length check applies, as with the ORM);
    # everything else gets an explicit cast so that NULLs and numbers have a type.
    if isinstance(field, models.CharField | models.TextField):
        return f"%({name})s"
    if isinstance(field, models.DecimalField):
        return f"CAST(%({name})s AS numeric)"
    return f"CAST(%({name})s AS {field.cast_db_type(connection)})"


def _insert_select(model, prefix: str, source: str) -> str:
    """``INSERT INTO <model> (<columns>) SELECT <params> FROM <source> RETURNING <pk>`` for ``model``."""
    fields = _insert_fields(model)
    columns = ", ".join(_qn(field.column) for field in fields)
    values = ", ".join(_placeholder(field, f"{prefix}{i}") for i, field in enumerate(fields))
    from_clause = f" FROM {source}" if source else ""
    return (
        f"INSERT INTO {_table(model)} ({columns}) SELECT {values}{from_clause} "
        f"RETURNING {_qn(model._meta.pk.column)}"
    )


def _insert_params(instance: models.Model, prefix: str) -> dict:
    """The values the ORM would insert for ``instance`` (``auto_now_add`` fields are set on it)."""
    return {
        f"{prefix}{i}": field.get_db_prep_save(field.pre_save(instance, True), connection)
        for i, field in enumerate(_insert_fields(type(instance)))
    }


def _mark_saved(instance: models.Model, pk: int) -> None:
    instance.pk = pk
    instance._state.adding = False
    instance._state.db = connection.alias


def _price_ok_sql(check: bool) -> str:
    if not check:
        return "price_ok AS MATERIALIZED (SELECT TRUE AS ok)"
    p = {name: _col(Price, name) for name in (
        "model_name", "effective_from", "input_per_mtok", "output_per_mtok", "cached_input_per_mtok",
        "per_gpu_second", "per_cpu_second",
    )}
    pk = _qn(Price._meta.pk.column)
    return f"""price_ok AS MATERIALIZED (
    SELECT EXISTS (
        SELECT 1 FROM (
            SELECT * FROM {_table(Price)}
            WHERE {p["model_name"]} = %(price_model)s AND {p["effective_from"]} <= CAST(%(price_at)s AS timestamptz)
            ORDER BY {p["effective_from"]} DESC LIMIT 1
        ) AS current_price
        WHERE current_price.{pk} = CAST(%(price_id)s AS bigint)
          AND current_price.{p["input_per_mtok"]} = CAST(%(price_input)s AS numeric)
          AND current_price.{p["output_per_mtok"]} = CAST(%(price_output)s AS numeric)
          AND current_price.{p["cached_input_per_mtok"]} IS NOT DISTINCT FROM CAST(%(price_cached)s AS numeric)
          AND current_price.{p["per_gpu_second"]} = CAST(%(price_gpu)s AS numeric)
          AND current_price.{p["per_cpu_second"]} = CAST(%(price_cpu)s AS numeric)
    ) AS ok
)"""


def _price_params(price: Price | None, at: datetime | None) -> dict:
    if price is None:
        return {}
    return {
        "price_model": price.model_name,
        "price_at": at,
        "price_id": price.pk,
        "price_input": price.input_per_mtok,
        "price_output": price.output_per_mtok,
        "price_cached": price.cached_input_per_mtok,
        "price_gpu": price.per_gpu_second,
        "price_cpu": price.per_cpu_second,
    }


# --------------------------------------------------------------------------- reserve


@dataclass(frozen=True)
class ReserveOutcome:
    reservation: Reservation | None = None  # set when the hold was taken
    price_stale: bool = False  # the price checked is no longer the one in force: nothing was done
    missing_budget_ids: tuple[int, ...] = ()  # budgets without a window for this period: nothing was done
    blocking: BudgetWindow | None = None  # the first window (by id) that does not fit: nothing was done
    blocking_hard_limit: Decimal | None = None


@cache
def _reserve_sql(price_check: bool) -> str:
    b = {name: _col(Budget, name) for name in ("team", "user", "api_key", "scope", "period", "hard_limit", "enabled")}
    w = {name: _col(BudgetWindow, name) for name in ("budget", "period_start", "spent", "reserved")}
    budget_pk, window_pk = _qn(Budget._meta.pk.column), _qn(BudgetWindow._meta.pk.column)
    link = Reservation.windows.through
    link_reservation, link_window = _col(link, "reservation"), _col(link, "budgetwindow")
    return f"""WITH budgets AS MATERIALIZED (
    SELECT b.{budget_pk} AS id, b.{b["hard_limit"]} AS hard_limit,
           CASE b.{b["period"]}
               WHEN %(day)s THEN CAST(%(day_start)s AS timestamptz)
               WHEN %(week)s THEN CAST(%(week_start)s AS timestamptz)
               WHEN %(month)s THEN CAST(%(month_start)s AS timestamptz)
               WHEN %(total)s THEN CAST(%(total_start)s AS timestamptz)
           END AS period_start
    FROM {_table(Budget)} AS b
    WHERE b.{b["team"]} = CAST(%(team_id)s AS bigint) AND b.{b["enabled"]}
      AND (b.{b["scope"]} = %(scope_team)s
           OR (b.{b["scope"]} = %(scope_user)s AND b.{b["user"]} = CAST(%(user_id)s AS bigint))
           OR (b.{b["scope"]} = %(scope_api_key)s AND b.{b["api_key"]} = CAST(%(api_key_id)s AS bigint)))
),
locked AS MATERIALIZED (
    SELECT w.{window_pk} AS id, w.{w["budget"]} AS budget_id, w.{w["period_start"]} AS period_start,
           w.{w["spent"]} AS spent, w.{w["reserved"]} AS reserved, budgets.hard_limit
    FROM {_table(BudgetWindow)} AS w
    JOIN budgets ON w.{w["budget"]} = budgets.id AND w.{w["period_start"]} = budgets.period_start
    ORDER BY w.{window_pk}
    FOR UPDATE OF w
),
blocking AS MATERIALIZED (
    SELECT * FROM locked WHERE spent + reserved + CAST(%(estimate)s AS numeric) > hard_limit ORDER BY id LIMIT 1
),
{_price_ok_sql(price_check)},
go AS MATERIALIZED (
    SELECT 1 AS one FROM price_ok
    WHERE price_ok.ok
      AND NOT EXISTS (SELECT 1 FROM blocking)
      AND (SELECT count(*) FROM locked) = (SELECT count(*) FROM budgets)
),
bumped AS (
    UPDATE {_table(BudgetWindow)} AS w SET {w["reserved"]} = w.{w["reserved"]} + CAST(%(estimate)s AS numeric)
    FROM locked, go WHERE w.{window_pk} = locked.id
    RETURNING w.{window_pk}
),
held AS ({_insert_select(Reservation, "r", "go")}),
links AS (
    INSERT INTO {_table(link)} ({link_reservation}, {link_window})
    SELECT held.{_qn(Reservation._meta.pk.column)}, locked.id FROM held, locked
)
SELECT (SELECT {_qn(Reservation._meta.pk.column)} FROM held),
       (SELECT ok FROM price_ok),
       ARRAY(SELECT id FROM budgets WHERE id NOT IN (SELECT budget_id FROM locked) ORDER BY id),
       blocking.id, blocking.budget_id, blocking.period_start, blocking.spent, blocking.reserved, blocking.hard_limit
FROM (SELECT 1) AS one LEFT JOIN blocking ON TRUE"""


def reserve(
    *,
    reservation: Reservation,
    team_id: int,
    user_id: int | None,
    api_key_id: int | None,
    period_starts: dict[str, datetime],
    price: Price | None = None,
    price_at: datetime | None = None,
) -> ReserveOutcome:
    """Hold ``reservation.estimate`` against every applicable window and insert ``reservation``, in one statement.

    ``reservation`` is an unsaved instance; on success it is saved (pk set) and returned.
    """
    params = {
        "team_id": team_id,
        "user_id": user_id,
        "api_key_id": api_key_id,
        "estimate": reservation.estimate,
        "scope_team": BudgetScope.TEAM.value,
        "scope_user": BudgetScope.USER.value,
        "scope_api_key": BudgetScope.API_KEY.value,
        **{period.value: period.value for period in BudgetPeriod},
        **{f"{period.value}_start": period_starts[period.value] for period in BudgetPeriod},
        **_insert_params(reservation, "r"),
        **_price_params(price, price_at),
    }
    with connection.cursor() as cursor:
        cursor.execute(_reserve_sql(price is not None), params)
        (held_id, price_ok, missing, window_id, budget_id, start, spent, reserved, hard_limit) = cursor.fetchone()
    if held_id is not None:
        _mark_saved(reservation, held_id)
        return ReserveOutcome(reservation=reservation)
    if not price_ok:
        return ReserveOutcome(price_stale=True)
    if window_id is not None:
        window = BudgetWindow(pk=window_id, budget_id=budget_id, period_start=start, spent=spent, reserved=reserved)
        return ReserveOutcome(blocking=window, blocking_hard_limit=hard_limit)
    return ReserveOutcome(missing_budget_ids=tuple(missing))


# --------------------------------------------------------------------------- settle (+ ledger row)


@dataclass(frozen=True)
class SettleOutcome:
    was: str | None  # the reservation's status before (None: no reservation, or it was settled already)
    record_id: int | None  # the ledger row's id (None: not asked for, or the price check failed)
    windows: list[tuple[int, Decimal, datetime | None, Decimal, int]]  # (id, spent, alert sent, limit, percent)


@cache
def _settle_sql(*, settle: bool, record: bool, price_check: bool) -> str:
    r_pk = _qn(Reservation._meta.pk.column)
    r = {name: _col(Reservation, name) for name in ("status", "estimate", "actual", "finished_at")}
    w = {name: _col(BudgetWindow, name) for name in ("budget", "spent", "reserved", "soft_alert_sent_at")}
    w_pk, b_pk = _qn(BudgetWindow._meta.pk.column), _qn(Budget._meta.pk.column)
    b = {name: _col(Budget, name) for name in ("hard_limit", "soft_limit_percent")}
    link = Reservation.windows.through
    link_reservation, link_window = _col(link, "reservation"), _col(link, "budgetwindow")
    parts = []
    if settle:
        parts += [
            f"""prev AS MATERIALIZED (
    SELECT {r_pk} AS id, {r["status"]} AS status, {r["estimate"]} AS estimate
    FROM {_table(Reservation)} WHERE {r_pk} = CAST(%(reservation_id)s AS bigint)
    FOR UPDATE
)""",
            f"""claimed AS (
    UPDATE {_table(Reservation)} AS r
    SET {r["status"]} = %(settled)s, {r["actual"]} = CAST(%(actual)s AS numeric),
        {r["finished_at"]} = CAST(%(finished_at)s AS timestamptz)
    FROM prev WHERE r.{r_pk} = prev.id AND prev.status <> %(settled)s
    RETURNING r.{r_pk} AS id, prev.status AS was, prev.estimate AS estimate
)""",
            f"""windows_locked AS MATERIALIZED (
    SELECT w.{w_pk} AS id FROM {_table(BudgetWindow)} AS w
    JOIN {_table(link)} AS link ON link.{link_window} = w.{w_pk}
    WHERE link.{link_reservation} = (SELECT id FROM claimed)
    ORDER BY w.{w_pk}
    FOR UPDATE OF w
)""",
            f"""booked AS (
    UPDATE {_table(BudgetWindow)} AS w
    SET {w["reserved"]} = w.{w["reserved"]} - CASE WHEN claimed.was = %(held)s THEN claimed.estimate ELSE 0 END,
        {w["spent"]} = w.{w["spent"]} + CAST(%(actual)s AS numeric)
    FROM windows_locked, claimed WHERE w.{w_pk} = windows_locked.id
    RETURNING w.{w_pk} AS id, w.{w["spent"]} AS spent, w.{w["soft_alert_sent_at"]} AS alert_sent_at,
              w.{w["budget"]} AS budget_id
)""",
        ]
    if record:
        parts.append(_price_ok_sql(price_check))
        parts.append(
            f"ledger AS ({_insert_select(UsageRecord, 'u', 'price_ok WHERE price_ok.ok')})"
        )
    select = [
        "(SELECT was FROM claimed)" if settle else "NULL",
        f"(SELECT {_qn(UsageRecord._meta.pk.column)} FROM ledger)" if record else "NULL",
    ]
    if settle:
        select += ["booked.id", "booked.spent", "booked.alert_sent_at", f"b.{b['hard_limit']}",
                   f"b.{b['soft_limit_percent']}"]
        source = (f"(SELECT 1) AS one LEFT JOIN booked ON TRUE "
                  f"LEFT JOIN {_table(Budget)} AS b ON b.{b_pk} = booked.budget_id")
    else:
        select += ["NULL"] * 5
        source = "(SELECT 1) AS one"
    return f"WITH {', '.join(parts)}\nSELECT {', '.join(select)} FROM {source}"


def settle(
    *,
    reservation_id: int | None,
    actual: Decimal | None,
    finished_at: datetime | None,
    record: UsageRecord | None = None,
    price: Price | None = None,
    price_at: datetime | None = None,
) -> SettleOutcome:
    """Settle a reservation to ``actual`` and/or insert the ledger row ``record``, in one statement.

    With ``price``, the ledger row is only inserted while that price is still the one in force at
    ``price_at`` (``record_id`` None otherwise; only use it without a settlement).
    """
    do_settle = reservation_id is not None
    params: dict = {}
    if do_settle:
        params.update(
            reservation_id=reservation_id,
            actual=actual,
            finished_at=finished_at,
            settled=ReservationStatus.SETTLED.value,
            held=ReservationStatus.HELD.value,
        )
    if record is not None:
        params.update(_insert_params(record, "u"))
        params.update(_price_params(price, price_at))
    sql = _settle_sql(settle=do_settle, record=record is not None, price_check=price is not None)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    was, record_id = rows[0][0], rows[0][1]
    if record is not None and record_id is not None:
        _mark_saved(record, record_id)
    windows = [tuple(row[2:]) for row in rows if row[2] is not None]
    return SettleOutcome(was=was, record_id=record_id, windows=windows)


# --------------------------------------------------------------------------- release / expire


@cache
def _release_sql() -> str:
    r_pk = _qn(Reservation._meta.pk.column)
    r = {name: _col(Reservation, name) for name in ("status", "estimate", "finished_at", "expires_at")}
    w_pk = _qn(BudgetWindow._meta.pk.column)
    reserved = _col(BudgetWindow, "reserved")
    link = Reservation.windows.through
    link_reservation, link_window = _col(link, "reservation"), _col(link, "budgetwindow")
    return f"""WITH prev AS MATERIALIZED (
    SELECT {r_pk} AS id, {r["estimate"]} AS estimate FROM {_table(Reservation)}
    WHERE {r_pk} = CAST(%(reservation_id)s AS bigint) AND {r["status"]} = %(held)s
      AND (CAST(%(expired_before)s AS timestamptz) IS NULL
           OR {r["expires_at"]} < CAST(%(expired_before)s AS timestamptz))
    FOR UPDATE
),
done AS (
    UPDATE {_table(Reservation)} AS r SET {r["status"]} = %(status)s,
        {r["finished_at"]} = CAST(%(finished_at)s AS timestamptz)
    FROM prev WHERE r.{r_pk} = prev.id
    RETURNING r.{r_pk} AS id, prev.estimate AS estimate
),
windows_locked AS MATERIALIZED (
    SELECT w.{w_pk} AS id FROM {_table(BudgetWindow)} AS w
    JOIN {_table(link)} AS link ON link.{link_window} = w.{w_pk}
    WHERE link.{link_reservation} = (SELECT id FROM done)
    ORDER BY w.{w_pk}
    FOR UPDATE OF w
),
given_back AS (
    UPDATE {_table(BudgetWindow)} AS w SET {reserved} = w.{reserved} - done.estimate
    FROM windows_locked, done WHERE w.{w_pk} = windows_locked.id
)
SELECT count(*) FROM done"""


def release(
    *, reservation_id: int, status: str, finished_at: datetime, expired_before: datetime | None = None
) -> bool:
    """Give a held reservation back (status ``released`` or ``expired``) in one statement. False: not held
    (or, with ``expired_before``, not expired by then)."""
    params = {
        "reservation_id": reservation_id,
        "held": ReservationStatus.HELD.value,
        "status": status,
        "finished_at": finished_at,
        "expired_before": expired_before,
    }
    with connection.cursor() as cursor:
        cursor.execute(_release_sql(), params)
        return bool(cursor.fetchone()[0])
