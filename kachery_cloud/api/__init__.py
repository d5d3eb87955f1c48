"""Layer 5 (api client) and, from the cloud store/load on, layer 6 (transfers)."""
