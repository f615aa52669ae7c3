"""Attach a fixed context to a pipeline, choose its attention backend, and prefill it (the gpu job)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.models import Team
from apps.core.errors import ValidationFailed
from apps.core.models import Job
from apps.costs.services import BudgetExceeded
from apps.rag.fixed_context import fixed_context_prefill_start
from apps.rag.models import Pipeline
from apps.rag.services import pipeline_save


def _option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise CommandError(f"--option takes key=value, got {text!r}")
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


class Command(BaseCommand):
    help = ("Set a pipeline's fixed context (a text file or a corpus), its attention backend and options; "
            "--prefill enqueues the attention.prefill job (KV + key indexes) and --wait follows its progress.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("pipeline", help="pipeline name")
        parser.add_argument("--team", required=True, help="team slug")
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--text-file", type=Path, help="a UTF-8 text file: the fixed context")
        source.add_argument("--corpus", help="a corpus name (of the same team) whose documents are the fixed context")
        source.add_argument("--clear", action="store_true", help="remove the fixed context (back to retrieval)")
        parser.add_argument("--backend", help="attention backend: full | squeezed | retrieval")
        parser.add_argument("--option", action="append", default=[], type=_option,
                            help="backend option key=value (JSON values), repeatable; replaces the options")
        parser.add_argument("--prefill", action="store_true", help="enqueue the prefill job")
        parser.add_argument("--also-build", default="", help="comma-separated extra backends to index in the job")
        parser.add_argument("--wait", action="store_true", help="with --prefill: print progress until the job ends")

    def handle(self, *args, pipeline: str, team: str, **opts) -> None:
        team_row = Team.objects.filter(slug=team).first()
        if team_row is None:
            raise CommandError(f"no team with slug {team!r}")
        row = Pipeline.objects.filter(team=team_row, name=pipeline).select_related("model_endpoint").first()
        if row is None:
            raise CommandError(f"team {team!r} has no pipeline {pipeline!r}")
        values = self._changes(team_row, team, opts)
        try:
            if values:
                row = pipeline_save(team=team_row, name=row.name, model_endpoint=row.model_endpoint, pipeline=row,
                                    **values)
            self.stdout.write(f"Pipeline {row.name!r}: fixed context {'set' if row.has_fixed_context else 'none'}, "
                              f"attention {row.attention_backend} {row.attention_options or ''}")
            if not opts["prefill"]:
                return
            extra = [b.strip() for b in opts["also_build"].split(",") if b.strip()]
            job = fixed_context_prefill_start(pipeline=row, backends=[row.attention_backend, *extra] if extra else None)
        except (ValidationFailed, BudgetExceeded) as exc:  # a budget refusal names the budget and the amount
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Prefill job #{job.pk} enqueued on the {job.queue} queue.")
        if not opts["wait"]:
            return
        self._wait(job)
        self.stdout.write("")
        if job.status != "succeeded":
            raise CommandError(f"job #{job.pk} {job.status}: {job.error}")
        self.stdout.write(json.dumps(Job.objects.get(pk=job.pk).result, indent=1))

    @staticmethod
    def _changes(team_row: Team, team: str, opts: dict) -> dict:
        """The pipeline fields the options change."""
        values: dict = {}
        if opts["text_file"]:
            values["fixed_context"] = opts["text_file"].read_text(encoding="utf-8")
            values["fixed_context_corpus"] = None
        elif opts["corpus"]:
            corpus = team_row.corpora.filter(name=opts["corpus"]).first()
            if corpus is None:
                raise CommandError(f"team {team!r} has no corpus {opts['corpus']!r}")
            values["fixed_context"], values["fixed_context_corpus"] = "", corpus
        elif opts["clear"]:
            values["fixed_context"], values["fixed_context_corpus"] = "", None
        if opts["backend"]:
            values["attention_backend"] = opts["backend"]
        if opts["option"] or opts["backend"]:
            values["attention_options"] = dict(opts["option"])
        return values

    def _wait(self, job: Job) -> None:
        """Print the job's progress on one line until it finishes."""
        while True:
            job.refresh_from_db()
            self.stdout.write(f"\r[{job.progress_percent:3d}%] {job.message:60s}", ending="")
            self.stdout.flush()
            if job.is_finished:
                break
            time.sleep(1.0)
