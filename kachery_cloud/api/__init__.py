"""Layer 5: the API client and the typed calls of its endpoints (transfers are layer 6, in ``transfer/``)."""
