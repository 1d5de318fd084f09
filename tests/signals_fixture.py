"""A signal in a private namespace, found by import path in the tests."""

from blinker import Namespace

_signals = Namespace()
order_placed = _signals.signal("order-placed")
