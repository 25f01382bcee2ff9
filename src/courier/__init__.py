"""Courier: a messenger server with durable per-user timelines and instant push."""

__version__ = "0.1.0"
