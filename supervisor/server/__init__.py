"""The daemon and its network interfaces: HTTP API, SSE writer, OpenAPI, metrics, systemd integration."""
