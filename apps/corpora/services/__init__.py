"""Writes for corpora, split by concern; this package's namespace is the public API.

- ``corpus``: corpus create, update, delete;
- ``documents``: uploads, bulk record imports, starting ingestion jobs, deletes;
- ``ingestion``: parse -> chunk -> embed -> index a batch of documents (crash-safe steps);
- ``index_build``: exact id changes to a corpus's FAISS/BM25 indexes, full rebuilds;
- ``embedding``: the embedder, encoding in slabs, the embedding bound and ledger rows;
- ``search``: the metered corpus search the pages and the API call (``corpus_search``);
- ``storage``: the original files under ``DATA_ROOT/uploads``.
"""

from apps.corpora.services.corpus import corpus_create, corpus_delete, corpus_update
from apps.corpora.services.documents import (
    INGEST_JOB_DOCUMENTS,
    INGEST_KIND,
    document_delete,
    document_upload,
    documents_import_records,
    documents_ingest_start,
    ingest_hold_open,
    upload_text,
)
from apps.corpora.services.embedding import EMBED_BATCH, EMBED_SLAB
from apps.corpora.services.index_build import (
    REBUILD_KIND,
    corpus_index_rebuild,
    corpus_index_rebuild_by_id,
    corpus_index_rebuild_start,
    index_apply,
    rebuild_hold_open,
)
from apps.corpora.services.ingestion import document_ingest, documents_ingest
from apps.corpora.services.search import corpus_search

__all__ = [
    "EMBED_BATCH",
    "EMBED_SLAB",
    "INGEST_JOB_DOCUMENTS",
    "INGEST_KIND",
    "REBUILD_KIND",
    "corpus_create",
    "corpus_delete",
    "corpus_index_rebuild",
    "corpus_index_rebuild_by_id",
    "corpus_index_rebuild_start",
    "corpus_search",
    "corpus_update",
    "document_delete",
    "document_ingest",
    "document_upload",
    "documents_import_records",
    "documents_ingest",
    "documents_ingest_start",
    "index_apply",
    "ingest_hold_open",
    "rebuild_hold_open",
    "upload_text",
]
