"""`create_app(config=None)`: the application factory, in the order a factory app needs.

1. the app and its configuration: defaults, then `config` (tests, scripts), with the bridge's
   configuration in the TOML file named by `BRIDGE_CONFIG` (this directory's `bridge.toml`
   unless the environment variable or `config` names another);
2. the app's signals imported (`examples.factory_app.signals`), so they exist when
3. the module-level extension is bound to the app: `bridge.init_app(app)`;
4. the blueprints registered.

    python -m examples.factory_app                                    # development server
    gunicorn -c examples/gunicorn.conf.py                             # its wsgi_app is this
    gunicorn -w 2 'examples.factory_app:create_app()'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from examples.factory_app import signals  # noqa: F401  (defines the signals before init_app)
from examples.factory_app.admin import admin
from examples.factory_app.extensions import bridge
from examples.factory_app.shop import shop

HERE = Path(__file__).resolve().parent


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A new app; `config` overrides app.config (tests point BRIDGE_SINKS at tmp_path)."""
    app = Flask(__name__)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("FACTORY_EXAMPLE_SECRET_KEY", "dev-only-not-a-secret"),
        # The environment variable BRIDGE_CONFIG, when set, wins over this (the bridge reads
        # it first), and BRIDGE_<KEY> variables override single keys of the file.
        BRIDGE_CONFIG=str(HERE / "bridge.toml"),
    )
    app.config.update(config or {})

    bridge.init_app(app)

    app.register_blueprint(shop)
    app.register_blueprint(admin)

    @app.get("/")
    def index() -> dict[str, list[str]]:
        return {"try": ["GET /shop/", "POST /shop/orders", "POST /admin/cache/clear"]}

    return app
