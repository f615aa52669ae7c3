"""Citations' ``retrievers`` take the search API's shape:
{"dense": [1, 0.83]} -> {"dense": {"rank": 1, "score": 0.83}}."""

from django.db import migrations


def _as_objects(citations):
    changed = False
    for citation in citations if isinstance(citations, list) else []:
        retrievers = citation.get("retrievers") if isinstance(citation, dict) else None
        if not isinstance(retrievers, dict):
            continue
        for name, value in list(retrievers.items()):
            if isinstance(value, list | tuple) and len(value) == 2:
                retrievers[name] = {"rank": value[0], "score": value[1]}
                changed = True
    return changed


def _as_lists(citations):
    changed = False
    for citation in citations if isinstance(citations, list) else []:
        retrievers = citation.get("retrievers") if isinstance(citation, dict) else None
        if not isinstance(retrievers, dict):
            continue
        for name, value in list(retrievers.items()):
            if isinstance(value, dict) and {"rank", "score"} <= set(value):
                retrievers[name] = [value["rank"], value["score"]]
                changed = True
    return changed


def _convert(convert):
    def run(apps, schema_editor):
        QueryRun = apps.get_model("rag", "QueryRun")
        batch = []
        for run_row in QueryRun.objects.exclude(citations=[]).only("pk", "citations").iterator(chunk_size=500):
            if convert(run_row.citations):
                batch.append(run_row)
            if len(batch) >= 500:
                QueryRun.objects.bulk_update(batch, ["citations"])
                batch = []
        if batch:
            QueryRun.objects.bulk_update(batch, ["citations"])

    return run


class Migration(migrations.Migration):

    dependencies = [
        ("rag", "0006_queryrun_quality_pipeline_abstain_below"),
    ]

    operations = [
        migrations.RunPython(_convert(_as_objects), _convert(_as_lists)),
    ]
