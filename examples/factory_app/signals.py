"""The app's own signals, in one module imported before `bridge.init_app(app)`.

The bridge resolves the names in `bridge.toml` (`"order-placed"`, ...) in blinker's default
namespace when `init_app` runs, so a signal must exist by then: defining them all here, and
importing this module at the top of the factory, guarantees it.

Send them with the current app as the sender, `current_app._get_current_object()`: with
several apps in one process (tests, a dispatcher), the event goes to that app's bridge only.
"""

import blinker

order_placed = blinker.signal("order-placed")  # order_id, item, quantity
cache_cleared = blinker.signal("cache-cleared")  # entries: how many were dropped
