"""Helpers for tests and benchmarks that start real services; not used by the scorer.

- `postgres`: a private, throwaway PostgreSQL server from the distribution's binaries.
"""
