"""Server layer 6: FastAPI routers, one per domain, thin; their pydantic models are the API contract."""
