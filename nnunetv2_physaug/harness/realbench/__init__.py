"""The real-data benchmark (MyoPS 2020) in parts: :mod:`.steps`, :mod:`.scoring`, :mod:`.report`; the whole run and
its command line are :mod:`nnunetv2_physaug.harness.benchmark_real` (``scripts/bench_real.py``)."""
