"""Adapters: concrete implementations of the ports, chosen by configuration."""
