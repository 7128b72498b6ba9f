"""The domain every stage shares: the case (CT + seeds), node results, geometry, measurements, metrics and user-facing errors. No torch at import."""
