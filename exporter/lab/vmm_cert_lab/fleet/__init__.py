"""The simulated SCVMM lab: a WS-Management fleet that the real pywinrm stack talks to.

Nothing here imports the product (``vmm_cert_exporter``; an import-linter contract keeps it
so): the lab and the collector share only the script contract
(``docs/powershell-contract.md``), so they cannot share a bug.
"""
