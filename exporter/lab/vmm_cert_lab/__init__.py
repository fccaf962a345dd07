"""The lab side of the repository: never shipped in the product's wheel or image.

``fleet`` is the simulated SCVMM fleet, which shares nothing with the product but the script
contract. ``demo``, ``promstack``, ``receiver_config`` and ``receiver_testing`` drive the
product against it (``make demo`` and the tests). docs/architecture.md draws the boundary.
"""
