"""Queue names, in one import-light place: parsing and bookkeeping on `cpu`, local model work on `gpu`,
calls to remote (OpenAI-compatible) model endpoints on `io` (a threads pool: they wait on the network)."""

from enum import StrEnum


class Queue(StrEnum):
    CPU = "cpu"
    GPU = "gpu"
    IO = "io"
