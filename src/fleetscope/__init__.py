"""Fleetscope: monitoring for multi-team GPU fleets (see README.md and DESIGN.md)."""

__version__ = "0.1.0"
