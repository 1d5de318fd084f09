"""The Flask-Login example with a tamper-evident, pseudonymized audit trail (see README.md)."""

from examples.audit_trail.app import create_app

__all__ = ["create_app"]
