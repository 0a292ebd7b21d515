"""edge-agent: anomaly detection on factory gateways."""

__version__ = "0.1.0"
__all__ = ["__version__"]
