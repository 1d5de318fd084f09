"""The admin blueprint: operations staff actions (the `cache-cleared` signal)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from werkzeug.wrappers import Response

from examples.factory_app.signals import cache_cleared

admin = Blueprint("admin", __name__, url_prefix="/admin")


@admin.post("/cache/clear")
def clear_cache() -> Response:
    cache: dict[str, object] = current_app.extensions.setdefault("example_cache", {})
    entries = len(cache)
    cache.clear()
    cache_cleared.send(current_app._get_current_object(), entries=entries)
    return jsonify(cleared=entries)


@admin.get("/boom")
def boom() -> Response:
    """A route with a bug, to show what a `request.exception` event looks like."""
    raise RuntimeError("the admin report generator is broken")
