"""What the tests share, by concern: ``nnunet`` (nnU-Net in temporary folders), ``reverse_inputs``,
``fake_trees`` (the converters' fake source trees with the real names) and ``kills`` (the phantom killed at
its swap). No test imports another test; tests import these as ``support.<module>`` (pytest's ``pythonpath``).
"""
