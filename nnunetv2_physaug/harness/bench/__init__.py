"""Benchmarks behind the ``scripts/bench_*.py`` commands: each module has a ``main()`` and prints ratios measured side by side."""
