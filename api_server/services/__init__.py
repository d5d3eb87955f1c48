"""Server layer 5: the rules (who may do what, what gets recorded), independent of HTTP. Each function takes a
SQLAlchemy session inside the caller's transaction."""
