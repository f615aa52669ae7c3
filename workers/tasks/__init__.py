"""Thin Celery tasks: ids in, a service call, progress on the Job row. The only part of workers/ that uses Django."""
