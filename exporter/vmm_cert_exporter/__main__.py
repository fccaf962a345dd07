import sys

from vmm_cert_exporter.cli import main

sys.exit(main())
