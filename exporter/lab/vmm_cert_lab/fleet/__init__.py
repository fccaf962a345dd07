"""The simulated SCVMM lab: a WS-Management fleet that the real pywinrm stack talks to.

Nothing here imports from the rest of ``vmm_cert_exporter``: the lab and the collector share
only the script contract (``docs/powershell-contract.md``), so they cannot share a bug.
"""
