"""The project's settings with the benchmark's URLconf (one extra endpoint that streams slowly)."""

from apps.config.settings import *  # noqa: F403

ROOT_URLCONF = "benchmarks.serving.urls"
