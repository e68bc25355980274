"""User prototypes: embedders, stores (SQLite, PostgreSQL), the in-memory member index; see base.py."""
