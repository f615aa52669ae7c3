"""OpenAPI description of API-key auth (drf-spectacular extension, loaded in ApiConfig.ready)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "apps.accounts.authentication.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "psk_<prefix>_<secret>",
            "description": "A team API key: `Authorization: Bearer psk_...`",
        }


# --------------------------------------------------------------------------- error responses

ERROR_SCHEMA = {
    "type": "object",
    "description": "Every REST error: a stable code, a message for people, details by code",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "detail": {"type": "object", "additionalProperties": True},
            },
            "required": ["code", "message", "detail"],
        }
    },
    "required": ["error"],
}
OPENAI_ERROR_SCHEMA = {
    "type": "object",
    "description": "OpenAI's error shape (the /v1 endpoints), with Parsimony's detail under `parsimony`",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
                "parsimony": {"type": "object", "additionalProperties": True},
            },
            "required": ["message", "type"],
        }
    },
    "required": ["error"],
}
# Every operation may answer these; operations with a body also these; writes that spend also 402.
ERRORS_ALWAYS = {
    "400": "The request is not valid (the message names the field or the limit)",
    "401": "No valid credentials",
    "403": "The credentials lack the scope this operation needs",
    "404": "No such object in this team (another team's looks the same)",
    "429": "Over the per-key rate limit",
}
ERRORS_WITH_BODY = {
    "413": "The body is over its size limit (PARSIMONY_MAX_JSON_BYTES, PARSIMONY_MAX_UPLOAD_BYTES, ...)",
    "415": "The body's content type is not one this operation reads",
}
ERRORS_SPENDING = {"402": "A budget cannot cover the work (nothing ran)"}


def add_error_responses(result: dict, generator, request, public) -> dict:
    """drf-spectacular postprocessing hook: document the error answers every operation can give, in the
    shape it gives them (ours under /api/, OpenAI's under /v1/), so that clients (and schemathesis'
    status-code and response-schema checks) know them."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"], components["OpenAIError"] = ERROR_SCHEMA, OPENAI_ERROR_SCHEMA
    for path, item in result.get("paths", {}).items():
        ref = {"$ref": "#/components/schemas/" + ("OpenAIError" if path.startswith("/v1/") else "Error")}
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            errors = dict(ERRORS_ALWAYS)
            if "requestBody" in operation or method in ("post", "put", "patch"):
                errors.update(ERRORS_WITH_BODY)
            if method == "post":
                errors.update(ERRORS_SPENDING)
            for code, description in errors.items():
                operation["responses"].setdefault(
                    code, {"description": description, "content": {"application/json": {"schema": ref}}}
                )
    return result


# --------------------------------------------------------------------------- tags by resource

# drf-spectacular tags an operation with its path's first segment: every /api/v1/... operation was
# "api". One tag per resource instead, matched on the path (the first match wins), in this order in
# Swagger UI and ReDoc. The operation ids are left as they were.
RESOURCE_TAGS: list[tuple[str, str, str]] = [
    # (path prefix, tag, description)
    ("/api/v1/me", "Account", "Who the credentials belong to: the team and the key's scopes"),
    ("/api/v1/corpora/{corpus_id}/documents", "Documents", "Upload documents into a corpus, list, read, delete"),
    ("/api/v1/documents", "Documents", "Upload documents into a corpus, list, read, delete"),
    ("/api/v1/corpora", "Corpora", "Document collections and their indexes; search a corpus"),
    ("/api/v1/pipelines", "Pipelines", "RAG pipelines: retrieval, compression, prompting and model settings"),
    ("/api/v1/queries", "Queries", "Ask a pipeline: the answer, its citations and its cost"),
    ("/api/v1/conversations", "Conversations", "Your threads of questions and follow-ups: turns and cost, delete"),
    ("/api/v1/agent-runs", "Agent runs", "Run an agent on a request: its steps, tool calls and cost"),
    ("/api/v1/agents", "Agents", "Agents: a model, the team's tools and their limits"),
    ("/api/v1/tools", "Tools", "The tool library agents choose from"),
    ("/api/v1/bulk-jobs", "Bulk jobs", "Files of questions run against a pipeline as one job; result files"),
    ("/api/v1/usage", "Usage", "The ledger summed: spend and tokens by day, stage, model, user and key"),
    ("/api/v1/budgets", "Budgets", "Spending limits per team, user or key, and their state"),
    ("/api/v1/eval-sets", "Evaluations", "Labelled question sets and evaluation runs: accuracy, cost, cost-of-pass"),
    ("/api/v1/evaluations", "Evaluations", "Labelled question sets and evaluation runs: accuracy, cost, cost-of-pass"),
    ("/api/v1/model-endpoints", "Model endpoints", "The team's OpenAI-compatible models: URL, key (write-only), price"),
    ("/api/v1/prices", "Model endpoints", "The team's OpenAI-compatible models: URL, key (write-only), price"),
    ("/api/v1/jobs", "Jobs", "Background work (ingestion, prefill): progress, result, cancel"),
    ("/v1/", "OpenAI-compatible", "Chat completions, embeddings and models for OpenAI clients"),
]


TAG_ORDER = [
    "Account", "Corpora", "Documents", "Pipelines", "Queries", "Conversations", "Bulk jobs", "Agents", "Agent runs",
    "Tools", "Usage", "Budgets", "Model endpoints", "Evaluations", "Jobs", "OpenAI-compatible",
]


def tag_by_resource(result: dict, generator, request, public) -> dict:
    """Postprocessing hook (SPECTACULAR_SETTINGS): each operation tagged by the resource it acts on."""
    used: list[str] = []
    for path, operations in result.get("paths", {}).items():
        tag = next((tag for prefix, tag, _ in RESOURCE_TAGS if path.startswith(prefix)), None)
        if tag is None:
            continue
        for operation in operations.values():
            if isinstance(operation, dict) and "operationId" in operation:
                operation["tags"] = [tag]
        if tag not in used:
            used.append(tag)
    descriptions = {tag: description for _, tag, description in RESOURCE_TAGS}
    result["tags"] = [{"name": tag, "description": descriptions[tag]} for tag in TAG_ORDER if tag in used]
    return result
