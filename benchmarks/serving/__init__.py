"""A settings module and URLconf for benchmarks.server_streams: the project's own, plus one slow stream."""
