"""The decision service: the router over HTTP (:mod:`router.service.app`), its API keys
(:mod:`router.service.keys`) and metrics (:mod:`router.service.metrics`)."""

from router.service.app import Settings, create_app

__all__ = ["Settings", "create_app"]
