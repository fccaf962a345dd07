"""``python -m vmm_cert_exporter``: the same command line as ``vmm-cert-exporter``."""

import sys

from vmm_cert_exporter.cli import main

sys.exit(main())
