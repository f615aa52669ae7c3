from django.apps import AppConfig


class AnswerCacheConfig(AppConfig):
    name = "apps.answer_cache"
    label = "answer_cache"
    verbose_name = "Answer cache"
