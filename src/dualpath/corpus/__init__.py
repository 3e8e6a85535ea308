"""Corpus sources, concept segmentation, and the document-sequence pairs models train on."""

from dualpath.corpus.segment import segment_sentences
from dualpath.corpus.sources import PYTHON_DOCS, WIKI_SAMPLE, Document, load_documents, unicode_problem

__all__ = ["PYTHON_DOCS", "WIKI_SAMPLE", "Document", "load_documents", "segment_sentences", "unicode_problem"]
