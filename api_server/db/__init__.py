"""Server layer 2: the database schema and sessions, the same code on SQLite and PostgreSQL."""
