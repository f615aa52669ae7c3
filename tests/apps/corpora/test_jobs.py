"""The corpora jobs are thin: the task passes ids to a service, which skips what was deleted meanwhile."""

from __future__ import annotations

import pytest

from apps.core.models import JobStatus
from apps.core.services import job_start
from apps.corpora.services import corpus_index_rebuild_by_id

pytestmark = pytest.mark.django_db


def test_an_ingestion_of_documents_deleted_before_it_ran_counts_them_missing(
    team_a, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        job = job_start(kind="corpora.ingest", team=team_a, params={"document_ids": [987654, "987655"]})
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == {"documents": 0, "ready": 0, "failed": 0, "chunks": 0, "tokens": 0, "missing": 2}


def test_a_rebuild_of_a_deleted_corpus_does_nothing():
    assert corpus_index_rebuild_by_id(corpus_id=987654) == {"chunks": 0, "missing": True}


def test_the_rebuild_job_runs_through_its_task_by_name(team_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = job_start(kind="corpora.rebuild_index", team=team_a, params={"corpus_id": 987654})
    job.refresh_from_db()
    assert (job.status, job.queue, job.result) == (JobStatus.SUCCEEDED, "gpu", {"chunks": 0, "missing": True})
