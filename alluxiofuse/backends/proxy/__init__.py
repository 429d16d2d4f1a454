"""Alluxio 2.x namespaces through the proxy REST server: its client and the backend on it."""
