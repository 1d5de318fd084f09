"""flask-signal-bridge: Flask and blinker signals as structured JSON-lines events.

from bridge import SignalBridge
bridge = SignalBridge(app)
"""

from bridge.correlation import request_id
from bridge.errors import BridgeError, ConfigError, DeliveryError, FatalError, RetryableError
from bridge.extension import SignalBridge
from bridge.structlogging import StructlogBridge
from bridge.testing import capture_events

__version__ = "0.1.0"

__all__ = [
    "BridgeError",
    "ConfigError",
    "DeliveryError",
    "FatalError",
    "RetryableError",
    "SignalBridge",
    "StructlogBridge",
    "__version__",
    "capture_events",
    "request_id",
]
