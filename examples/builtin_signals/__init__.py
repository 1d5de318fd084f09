"""Flask's built-in signals as events: `python examples/builtin_signals/app.py`."""
