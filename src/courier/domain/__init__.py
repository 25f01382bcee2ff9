"""Types shared by every layer: events, store operations, errors, ids."""
