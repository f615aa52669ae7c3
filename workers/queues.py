"""Queue names, in one import-light place: parsing and bookkeeping on `cpu`, model work on `gpu`."""

from enum import StrEnum


class Queue(StrEnum):
    CPU = "cpu"
    GPU = "gpu"
