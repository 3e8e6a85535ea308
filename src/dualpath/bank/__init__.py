"""The concept bank: concepts, their vectors and an index, in one verified directory."""

from dualpath.bank.backend import IndexBackend, create_backend, open_backend
from dualpath.bank.bank import ConceptBank
from dualpath.bank.metadata import Concept

__all__ = ["Concept", "ConceptBank", "IndexBackend", "create_backend", "open_backend"]
