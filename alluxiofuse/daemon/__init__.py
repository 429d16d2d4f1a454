"""The daemon process and what serves it: logs, metrics endpoint, systemd, memory governor."""
