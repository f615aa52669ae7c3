"""The RAG pipeline on plain data: retrieve → compress → prompt → generate (see pipeline.py)."""
