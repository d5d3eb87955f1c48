"""Server layer 7: server-rendered pages (Jinja2), calling the same services as the API."""
