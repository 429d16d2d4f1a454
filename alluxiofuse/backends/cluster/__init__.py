"""Alluxio 3.x clusters: the worker client, the hash ring, and where membership comes from."""
