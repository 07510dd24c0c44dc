"""The project's measuring harness, apart from the product: benchmarks (``bench``), checks against independent
truth (``checks``), the real-data benchmark (``benchmark_real`` with its steps, scoring, report and budget
curve in ``realbench``) and the realism statistics (``realism``). ``scripts/`` runs them; nothing in the
product (trainers, reverse imaging, contrast, converters, evaluation, the demo) imports from here.
"""
