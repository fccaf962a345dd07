"""The exporter's HTML pages, rendered from a snapshot alone (no I/O): the landing page, the
per-computer page, and the plain CSS and JavaScript they load (docs/pages.md)."""
