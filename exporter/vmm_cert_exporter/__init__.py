"""vmm-cert-exporter: watch SCVMM self-signed certificates before they cost you a host."""

__version__ = "0.1.0"
