"""The application-factory example: `python -m examples.factory_app` (see README.md)."""

from examples.factory_app.app import create_app

__all__ = ["create_app"]
