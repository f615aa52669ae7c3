"""REST: pipelines (create, read, change, delete), the prefill of a pipeline's fixed context, and fitting a
cascade's scorer from an evaluation job.
One view per operation, thin."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.api.serializers import (
    JobOutputSerializer,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StrictSlugField,
    list_of,
)
from apps.api.shortcuts import paginated_response, request_api_key
from apps.core.errors import ValidationFailed
from apps.core.scoping import team_scoped
from apps.corpora.models import Corpus
from apps.evaluations import selectors as eval_selectors
from apps.evaluations.cascade_fit import OBJECTIVES, cascade_scorer_fit_from_evaluation
from apps.rag import selectors as rag_selectors
from apps.rag import services as rag_services
from apps.rag.fixed_context import fixed_context_prefill_start


def _corpus_for(team, corpus_id: int | None):
    """The team's corpus ``corpus_id`` (None clears); another team's id reads as unknown, like a missing one."""
    if corpus_id is None:
        return None
    corpus = team_scoped(Corpus, team).filter(pk=corpus_id).first()
    if corpus is None:
        raise ValidationFailed(
            f"unknown corpus: {corpus_id}", detail={"fields": {"fixed_context_corpus": "not found"}}
        )
    return corpus


def _corpora_for(team, ids: list[int]):
    corpora = list(team_scoped(Corpus, team).filter(pk__in=ids))
    missing = sorted(set(ids) - {c.pk for c in corpora})
    if missing:
        raise ValidationFailed(f"unknown corpora: {missing}", detail={"fields": {"corpora": "not found"}})
    return corpora


class PipelineOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    corpora = serializers.SerializerMethodField()
    retriever = serializers.CharField()
    top_k = serializers.IntegerField()
    compression_method = serializers.CharField()
    compression_target = serializers.FloatField()
    prompting_strategy = serializers.CharField()
    prompting_options = serializers.JSONField(help_text="Options of the prompting strategy (e.g. top_k, answer_mode)")
    attention_backend = serializers.CharField()
    attention_options = serializers.JSONField(help_text="Options of the attention backend (e.g. keep_fraction, top_k)")
    fixed_context = serializers.CharField(help_text="A long text every question is answered from (empty: none)")
    fixed_context_corpus = serializers.IntegerField(
        source="fixed_context_corpus_id", allow_null=True, help_text="A corpus used as the fixed context (text wins)"
    )
    has_fixed_context = serializers.BooleanField()
    decoding_options = serializers.JSONField(
        help_text="Overrides of the model's decoding defaults (repetition_guard, repetition_penalty, "
        "no_repeat_ngram_size, stop)"
    )
    abstain_below = serializers.FloatField(
        allow_null=True,
        help_text="Answer \"not found in the documents\" without generating when the retrieval confidence is "
        "below this (0..1); null: never",
    )
    answer_cache = serializers.BooleanField(
        help_text="Whether the pipeline reuses the team's cached answers (docs/cache.md)"
    )
    cascade = serializers.JSONField(
        help_text="A cascade: {\"tiers\": [pipeline ids, cheapest first], \"scorer\": {...}}; {} for an ordinary "
        "pipeline (docs/cascades.md)"
    )
    model = serializers.CharField(source="model_endpoint.name")
    max_output_tokens = serializers.IntegerField()
    history_token_budget = serializers.IntegerField(
        help_text="Follow-ups carry the conversation's newest turns within this many tokens (0: none)"
    )
    system_prompt = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_corpora(self, pipeline) -> list[int]:
        return [corpus.pk for corpus in pipeline.corpora.all()]


class PipelineInputSerializer(serializers.Serializer):
    name = StrictSlugField(max_length=120)
    description = StrictCharField(required=False, allow_blank=True, max_length=500)
    corpora = serializers.ListField(child=StrictIntegerField(), required=False)
    retriever = StrictCharField(
        required=False, help_text="dense | bm25 | hybrid | none (retrieval-free: no corpora, the model answers alone)"
    )
    top_k = StrictIntegerField(required=False)
    compression_method = StrictCharField(required=False)
    compression_target = StrictFloatField(
        required=False,
        help_text="A share of the context's tokens to keep (0 < target ≤ 1) or a whole token budget (16 to 1,000,000)",
    )
    prompting_strategy = StrictCharField(
        required=False,
        help_text="naive | superposition | extractive_answer (the answer quotes the best sentence of the passages "
        "with its [n]: no generation, only a sentence embedding is billed)",
    )
    prompting_options = serializers.JSONField(
        required=False,
        help_text="An object: the fields of the strategy's config (superposition: "
        "{\"top_k\": 2, \"positions\": \"equalized\", \"answer_mode\": \"superposed\"}; extractive_answer: "
        "{\"sentences\": 1, \"lexical_weight\": 0.3, ...})",
    )
    attention_backend = StrictCharField(required=False, help_text="full | squeezed | retrieval")
    attention_options = serializers.JSONField(
        required=False, help_text="An object: the fields of the backend's config (e.g. {\"keep_fraction\": 0.1})"
    )
    fixed_context = StrictCharField(
        required=False, allow_blank=True, trim_whitespace=False,
        help_text="A long text every question is answered from (skips retrieval); blank clears it",
    )
    fixed_context_corpus = StrictIntegerField(
        required=False,
        allow_null=True,
        help_text="The id of a corpus of this team used as the fixed context; null clears it",
    )
    decoding_options = serializers.JSONField(
        required=False,
        help_text="An object overriding the model's decoding defaults: {\"repetition_guard\": true, "
        "\"repetition_penalty\": 1.1, \"no_repeat_ngram_size\": 4, \"stop\": [\"\\n\\n\"]}",
    )
    abstain_below = StrictFloatField(
        required=False, allow_null=True, min_value=0, max_value=1,
        help_text="0..1: when the best hit's retrieval confidence (its percentile among the pipeline's earlier "
        "runs) is below this, answer \"not found in the documents\" without generating; null: never",
    )
    answer_cache = serializers.BooleanField(
        required=False, help_text="Reuse the team's cached answers (default true; docs/cache.md)"
    )
    cascade = serializers.JSONField(
        required=False,
        help_text="Make this pipeline a cascade: {\"tiers\": [pipeline names or ids, cheapest first, 2 to 8], "
        "\"scorer\": fitted JSON (optional)}; its corpora and retrieval options are its tiers' (docs/cascades.md)",
    )
    model = StrictCharField(help_text="A model endpoint name (GET /v1/models)")
    max_output_tokens = StrictIntegerField(required=False)
    history_token_budget = StrictIntegerField(
        required=False, min_value=0, max_value=32_768,
        help_text="Follow-up questions (/v1 messages, Ask page conversations) carry the newest turns within this "
        "many tokens, billed as prompt; older turns are dropped. 0: each question alone",
    )
    system_prompt = StrictCharField(required=False, allow_blank=True)


def _pipeline_values(team, data: dict) -> dict:
    values = {key: data[key] for key in rag_services.PIPELINE_FIELDS if key in data}
    if "fixed_context_corpus" in values:
        values["fixed_context_corpus"] = _corpus_for(team, values["fixed_context_corpus"])
    return values


class PipelineListView(APIView):
    required_scope = "admin"

    @extend_schema(
        operation_id="api_v1_pipelines_list",
        responses=list_of(PipelineOutputSerializer),
        summary="The team's pipelines",
    )
    def get(self, request):
        return paginated_response(
            self, request, rag_selectors.pipeline_list(team=request.team), PipelineOutputSerializer
        )

    @extend_schema(
        request=PipelineInputSerializer,
        responses={201: PipelineOutputSerializer},
        summary="Create a pipeline",
    )
    def post(self, request):
        data = PipelineInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        pipeline = rag_services.pipeline_save(
            team=request.team,
            name=values["name"],
            model_endpoint=values["model"],
            corpora=_corpora_for(request.team, values.get("corpora", [])),
            created_by=request.user,
            **_pipeline_values(request.team, values),
        )
        return Response(PipelineOutputSerializer(pipeline).data, status=status.HTTP_201_CREATED)


class PipelineDetailView(APIView):
    required_scope = "admin"

    @extend_schema(responses=PipelineOutputSerializer, summary="One pipeline")
    def get(self, request, pipeline_id: int):
        return Response(
            PipelineOutputSerializer(
                rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id)
            ).data
        )

    @extend_schema(
        request=PipelineInputSerializer(partial=True),
        responses=PipelineOutputSerializer,
        summary="Change a pipeline",
    )
    def patch(self, request, pipeline_id: int):
        pipeline = rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id)
        data = PipelineInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        pipeline = rag_services.pipeline_save(
            team=request.team,
            pipeline=pipeline,
            name=values.get("name", pipeline.name),
            model_endpoint=values.get("model") or pipeline.model_endpoint,
            corpora=_corpora_for(request.team, values["corpora"]) if "corpora" in values else None,
            **_pipeline_values(request.team, values),
        )
        return Response(PipelineOutputSerializer(pipeline).data)

    @extend_schema(responses={204: None}, summary="Delete a pipeline")
    def delete(self, request, pipeline_id: int):
        rag_services.pipeline_delete(pipeline=rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --------------------------------------------------------------------------- fixed-context prefill


class PrefillInputSerializer(serializers.Serializer):
    backends = serializers.ListField(
        child=StrictCharField(), required=False, allow_empty=True,
        help_text="Attention backends whose indexes to build (default: the pipeline's own backend)",
    )


class PrefillJobOutputSerializer(JobOutputSerializer):
    # A plain string here: a second component with the job's status choices would rename the enum.
    status = serializers.CharField(help_text="queued | running | succeeded | failed | cancelled")
    url = serializers.SerializerMethodField(help_text="Poll this for the job's status and progress")

    class Meta(JobOutputSerializer.Meta):
        fields = [*JobOutputSerializer.Meta.fields, "url"]

    def get_url(self, job) -> str:
        path = reverse("api-job", args=[job.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


class PipelinePrefillView(APIView):
    required_scope = "admin"

    @extend_schema(
        request=PrefillInputSerializer,
        responses={202: PrefillJobOutputSerializer},
        summary="Prefill the pipeline's fixed context (KV cache + attention indexes) in a gpu job; poll the job's url",
        description=(
            "Reserves the prefill's worst-case cost first (402 when a budget cannot cover it), then starts the "
            "`attention.prefill` job. 400 when the pipeline has no fixed context, its model endpoint is remote, or "
            "a backend name is unknown. The job's compute is billed as one `prefill` ledger row."
        ),
    )
    def post(self, request, pipeline_id: int):
        pipeline = rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id)
        data = PrefillInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = fixed_context_prefill_start(
            pipeline=pipeline,
            user=request.user,
            backends=data.validated_data.get("backends") or None,
            api_key=request_api_key(request),
        )
        job.refresh_from_db()
        body = PrefillJobOutputSerializer(job, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


# --------------------------------------------------------------------------- a cascade's scorer


class CascadeScorerInputSerializer(serializers.Serializer):
    evaluation = StrictIntegerField(help_text="The id of a finished evaluation job of the team that ran every tier")
    objective = serializers.ChoiceField(
        choices=list(OBJECTIVES), help_text="accuracy_floor: the cheapest thresholds reaching this accuracy "
        "(contained); cost_target: the most accurate thresholds within this mean cost per question",
    )
    value = StrictCharField(
        required=False, allow_null=True, allow_blank=True, max_length=40,
        help_text="accuracy_floor: a share in (0, 1] (omitted: the last tier's accuracy on the rows); "
        "cost_target: dollars per question, as a decimal string (e.g. \"0.0001\")",
    )

    def to_internal_value(self, data):
        # A JSON number is accepted for value as well as a string (kept exact: its text).
        if isinstance(data, dict) and isinstance(data.get("value"), int | float) and not isinstance(
                data.get("value"), bool):
            data = {**data, "value": str(data["value"])}
        return super().to_internal_value(data)


class CascadeTierFitSerializer(serializers.Serializer):
    pipeline = serializers.CharField()
    pipeline_id = serializers.IntegerField()
    threshold = serializers.FloatField(allow_null=True, help_text="Accept from this probability (1.01: never); "
                                       "null for the last tier, which always answers")
    accuracy = serializers.FloatField(help_text="This tier alone on the rows (contained)")
    cost_per_question = serializers.CharField(help_text="This tier alone on the rows, USD")
    answered = serializers.IntegerField(help_text="Questions the fitted cascade would stop at this tier")


class CascadeFitSerializer(serializers.Serializer):
    accuracy = serializers.FloatField()
    cost_per_question = serializers.CharField(help_text="USD")


class CascadeScorerOutputSerializer(serializers.Serializer):
    pipeline = serializers.IntegerField()
    pipeline_name = serializers.CharField()
    evaluation = serializers.IntegerField()
    eval_set = serializers.CharField()
    fitted_at = serializers.CharField()
    fitted_by = serializers.CharField()
    objective = serializers.CharField()
    value = serializers.JSONField(help_text="The accuracy floor (a number) or the cost target (a decimal string)")
    met = serializers.BooleanField(help_text="Whether the thresholds reach the floor / stay within the target")
    questions = serializers.IntegerField(help_text="Questions every tier answered: the rows fit on")
    rows = serializers.IntegerField()
    skipped_questions = serializers.IntegerField(help_text="Questions some tier failed or did not answer")
    cascade = CascadeFitSerializer(help_text="What the fitted cascade scores and costs on the rows")
    tiers = CascadeTierFitSerializer(many=True)


class PipelineCascadeScorerView(APIView):
    required_scope = "admin"

    @extend_schema(
        operation_id="api_v1_pipelines_cascade_scorer_fit",
        request=CascadeScorerInputSerializer,
        responses=CascadeScorerOutputSerializer,
        summary="Fit a cascade's scorer from an evaluation job that ran every tier, and store it",
        description=(
            "One logistic regression per tier but the last on the job's labelled rows, thresholds chosen under "
            "the objective; stored in the cascade's `cascade.scorer` with this summary as its provenance "
            "(docs/cascades.md). 400 `tiers_missing` (naming them), `too_few_rows`, `one_class`, "
            "`unknown_evaluation`, or the objective's value out of range; nothing is stored then."
        ),
    )
    def post(self, request, pipeline_id: int):
        pipeline = rag_selectors.pipeline_get(team=request.team, pipeline_id=pipeline_id)
        data = CascadeScorerInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        evaluation = eval_selectors.eval_run_list(team=request.team).filter(pk=values["evaluation"]).first()
        if evaluation is None:
            raise ValidationFailed(f"unknown evaluation {values['evaluation']}", code="unknown_evaluation",
                                   detail={"fields": {"evaluation": "not found"}})
        summary = cascade_scorer_fit_from_evaluation(
            pipeline=pipeline, evaluation=evaluation, objective=values["objective"], value=values.get("value"),
            user=request.user,
        )
        return Response(CascadeScorerOutputSerializer(summary).data)
