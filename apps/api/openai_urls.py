from django.urls import path, re_path

from apps.api import openai_views
from apps.api.errors import unmatched_url

urlpatterns = [
    path("chat/completions", openai_views.ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("embeddings", openai_views.EmbeddingsView.as_view(), name="openai-embeddings"),
    path("models", openai_views.ModelsView.as_view(), name="openai-models"),
    # Last: any other URL here answers 404 in the API's error shape.
    re_path(r"^", unmatched_url),
]
