"""flagtrail: provable SOC2 evidence for every feature-flag change."""

__version__ = "0.1.0"
