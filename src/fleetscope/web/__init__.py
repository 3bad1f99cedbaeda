"""Web UI and JSON API: a FastAPI app built by :func:`fleetscope.web.app.create_app`."""
