"""REST: corpora CRUD, document upload (multipart) and status, search."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.api.parsers import BoundedJSONParser
from apps.api.serializers import RETRIEVERS_FIELD, StrictCharField, StrictIntegerField, list_of
from apps.api.shortcuts import paginated_response, request_api_key
from apps.core.errors import ValidationFailed
from apps.core.scoping import team_object_or_404
from apps.corpora import selectors as corpus_selectors
from apps.corpora import services as corpus_services
from apps.corpora.models import Document

RECORD_EXTENSIONS = (".jsonl", ".csv")


class CorpusOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    embedding_model = serializers.CharField()
    chunk_tokens = serializers.IntegerField()
    overlap_tokens = serializers.IntegerField()
    index_type = serializers.CharField()
    documents = serializers.SerializerMethodField()
    chunks = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    # A list's rows carry both counts (corpus_list annotates them); a single corpus counts them itself.
    def get_documents(self, corpus) -> int:
        counted = getattr(corpus, "n_documents", None)
        return corpus.documents.count() if counted is None else counted

    def get_chunks(self, corpus) -> int:
        counted = getattr(corpus, "n_ready_chunks", None)
        return corpus_selectors.chunk_count(corpus=corpus) if counted is None else counted


class CorpusInputSerializer(serializers.Serializer):
    name = StrictCharField(max_length=120)
    description = StrictCharField(required=False, allow_blank=True)
    embedding_model = StrictCharField(required=False)
    chunk_tokens = StrictIntegerField(required=False, min_value=16, max_value=4096)
    overlap_tokens = StrictIntegerField(required=False, min_value=0, max_value=2048)
    index_type = StrictCharField(required=False)


class DocumentOutputSerializer(serializers.ModelSerializer):
    corpus = serializers.IntegerField(source="corpus_id")
    chunks = serializers.SerializerMethodField()

    class Meta:
        model = Document
        fields = ["id", "corpus", "title", "filename", "media_type", "sha256", "size", "status", "error",
                  "token_count", "external_id", "chunks", "created_at", "updated_at"]

    def get_chunks(self, document) -> int:
        counted = getattr(document, "n_chunks", None)  # document_list annotates it
        return document.chunks.count() if counted is None else counted


class UploadInputSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="One file: .txt .md .html .pdf .docx, or .jsonl/.csv for bulk import")
    text_field = serializers.CharField(required=False, default="text")
    title_field = serializers.CharField(required=False, default="title")
    id_field = serializers.CharField(required=False, allow_blank=True)


class SearchInputSerializer(serializers.Serializer):
    query = StrictCharField(max_length=4000)
    k = StrictIntegerField(default=5, min_value=1, max_value=100)
    retriever = StrictCharField(default="hybrid")


class SearchHitSerializer(serializers.Serializer):
    chunk_id = serializers.IntegerField(source="chunk.pk")
    document_id = serializers.IntegerField(source="chunk.document_id")
    document_title = serializers.CharField(source="chunk.document.title")
    text = serializers.CharField(source="chunk.text")
    start = serializers.IntegerField(source="chunk.char_start")
    end = serializers.IntegerField(source="chunk.char_end")
    score = serializers.FloatField()
    retrievers = serializers.SerializerMethodField()

    @extend_schema_field(RETRIEVERS_FIELD)
    def get_retrievers(self, hit) -> dict:
        return {name: {"rank": rank, "score": score} for name, (rank, score) in hit.retrievers.items()}


def _corpus(request, corpus_id: int):
    return corpus_selectors.corpus_get(team=request.team, corpus_id=corpus_id)


class CorpusListView(APIView):
    required_scope = "ingest"
    required_scopes = {"GET": ("read", "ingest")}  # an ingest-only key finds the corpus to upload into

    @extend_schema(
        operation_id="api_v1_corpora_list",
        responses=list_of(CorpusOutputSerializer),
        summary="The team's corpora",
    )
    def get(self, request):
        return paginated_response(
            self, request, corpus_selectors.corpus_list(team=request.team), CorpusOutputSerializer
        )

    @extend_schema(request=CorpusInputSerializer, responses={201: CorpusOutputSerializer}, summary="Create a corpus")
    def post(self, request):
        data = CorpusInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        corpus = corpus_services.corpus_create(team=request.team, user=request.user, **data.validated_data)
        return Response(CorpusOutputSerializer(corpus).data, status=status.HTTP_201_CREATED)


class CorpusDetailView(APIView):
    required_scopes = {"GET": ("read", "ingest"), "PATCH": "ingest", "DELETE": "admin"}

    @extend_schema(responses=CorpusOutputSerializer, summary="One corpus")
    def get(self, request, corpus_id: int):
        return Response(CorpusOutputSerializer(_corpus(request, corpus_id)).data)

    @extend_schema(
        request=CorpusInputSerializer(partial=True),
        responses=CorpusOutputSerializer,
        summary="Change a corpus",
    )
    def patch(self, request, corpus_id: int):
        corpus = _corpus(request, corpus_id)
        data = CorpusInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        corpus = corpus_services.corpus_update(corpus=corpus, **data.validated_data)
        return Response(CorpusOutputSerializer(corpus).data)

    @extend_schema(responses={204: None}, summary="Delete a corpus, its documents, chunks and index")
    def delete(self, request, corpus_id: int):
        corpus_services.corpus_delete(corpus=_corpus(request, corpus_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class DocumentListView(APIView):
    required_scope = "ingest"
    required_scopes = {"GET": ("read", "ingest")}
    parser_classes = [MultiPartParser, FormParser, BoundedJSONParser]

    @extend_schema(
        operation_id="api_v1_corpora_documents_list",
        responses=list_of(DocumentOutputSerializer),
        summary="A corpus's documents and their status",
    )
    def get(self, request, corpus_id: int):
        corpus = _corpus(request, corpus_id)
        documents = corpus_selectors.document_list(corpus=corpus, status=request.query_params.get("status"))
        return paginated_response(self, request, documents, DocumentOutputSerializer)

    @extend_schema(
        request={"multipart/form-data": UploadInputSerializer},
        responses={201: DocumentOutputSerializer(many=True)},
        summary="Upload a document (ingested in the background; poll its status) or a .jsonl/.csv of records",
    )
    def post(self, request, corpus_id: int):
        corpus = _corpus(request, corpus_id)
        data = UploadInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        content = upload.read()
        name = upload.name or "upload"
        if name.lower().endswith(RECORD_EXTENSIONS):
            documents = corpus_services.documents_import_records(
                corpus=corpus,
                filename=name,
                data=content,
                text_field=data.validated_data["text_field"],
                title_field=data.validated_data["title_field"],
                id_field=data.validated_data.get("id_field") or None,
                user=request.user,
                api_key=request_api_key(request),
            )
        else:
            documents = [
                corpus_services.document_upload(
                    corpus=corpus, filename=name, data=content, user=request.user, api_key=request_api_key(request)
                )
            ]
        return Response(DocumentOutputSerializer(documents, many=True).data, status=status.HTTP_201_CREATED)


class DocumentDetailView(APIView):
    required_scope = "ingest"
    required_scopes = {"GET": ("read", "ingest")}  # an ingest-only key checks the status of its upload

    @extend_schema(responses=DocumentOutputSerializer, summary="One document's status")
    def get(self, request, document_id: int):
        return Response(DocumentOutputSerializer(team_object_or_404(Document, request.team, pk=document_id)).data)

    @extend_schema(responses={204: None}, summary="Delete a document and its vectors")
    def delete(self, request, document_id: int):
        corpus_services.document_delete(document=team_object_or_404(Document, request.team, pk=document_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class SearchView(APIView):
    required_scope = "query"

    @extend_schema(request=SearchInputSerializer, responses=list_of(SearchHitSerializer, paginated=False),
                   summary="Search a corpus (dense, bm25 or hybrid); hits say which retriever found them")
    def post(self, request, corpus_id: int):
        corpus = _corpus(request, corpus_id)
        data = SearchInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        if not values["query"].strip():
            raise ValidationFailed("the query is empty")
        hits = corpus_services.corpus_search(
            corpora=corpus, query=values["query"], retriever=values["retriever"], k=values["k"], path="search_api",
            user=request.user, api_key=request_api_key(request),
        )
        return Response({"count": len(hits), "results": SearchHitSerializer(hits, many=True).data})
