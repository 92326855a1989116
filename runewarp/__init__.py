"""Runewarp: publish TLS services from behind NAT without terminating TLS at the edge."""

__version__ = "0.1.0"
