"""The test harness: what the test tiers and the load tools (load_testing/) share.

On the import path through pytest's `pythonpath` setting (pyproject.toml); `make loadtest` and
`make bench` set PYTHONPATH for the load tools. Nothing here imports from load_testing/ or from a test.
"""
