"""The app's extensions, created once at import and bound to each app in `create_app`.

Blueprints and other modules import them from here (never from the factory), so nothing
imports the module that builds the app: the usual way to keep a factory app free of cycles.
"""

from bridge import SignalBridge

# One SignalBridge for every app the factory makes: `init_app` gives each app its own
# configuration, sinks and receivers; `bridge.flush(app=...)` and `close(app=...)` pick one.
bridge = SignalBridge()
