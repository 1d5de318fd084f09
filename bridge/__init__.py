"""flask-signal-bridge: Flask and blinker signals as structured JSON-lines events."""
