"""scan-agent: the edge agent of a drug-traceability scanner kiosk."""

__version__ = "0.1.0"
