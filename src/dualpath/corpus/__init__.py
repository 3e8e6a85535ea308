"""Corpus sources, concept segmentation, and the document-sequence pairs models train on."""
