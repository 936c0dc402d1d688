"""Performance benchmarks of robustpath against its peers and this machine's limit.

Run ``python -m benchmarks`` (``make perf``); results go to ``benchmarks/RESULTS.md``.
"""
