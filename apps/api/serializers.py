from rest_framework import serializers

from apps.core.models import Job


class JobOutputSerializer(serializers.ModelSerializer):
    progress_percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = Job
        fields = [
            "id", "kind", "status", "progress_done", "progress_total", "progress_percent", "message",
            "error", "result", "attempts", "created_at", "started_at", "finished_at",
        ]
