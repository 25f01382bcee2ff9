"""Transport: HTTP routes, the WebSocket handler, long-poll waiters, the static web app."""
