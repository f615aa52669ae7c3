from django.urls import path

from apps.api import openai_views

urlpatterns = [
    path("chat/completions", openai_views.ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("embeddings", openai_views.EmbeddingsView.as_view(), name="openai-embeddings"),
    path("models", openai_views.ModelsView.as_view(), name="openai-models"),
]
