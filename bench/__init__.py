"""The bemi benchmark: write overhead and ingest throughput next to the alternatives.

Run it with ``make bench`` (or ``make bench-quick``); ``python -m bench.run --help`` lists
the options. It measures and reports; it is not a test and never fails on a missed target.
"""
