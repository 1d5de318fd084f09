"""Signals found by import path in the tests: one in a private namespace, one without a name,
and an attribute that is not a signal."""

from blinker import Namespace, Signal

_signals = Namespace()
order_placed = _signals.signal("order-placed")
stock_changed = Signal()  # anonymous: its event is named after the attribute
not_a_signal = "order-placed"
