"""Analyses built on the rest of difflid: the h-space probe (``probe``), the ablation sweeps (``sweep``), the
speed/memory benchmark (``benchmark``, with its measuring helpers in ``benchmark_measure``) and the quality study of
precomputed against online prior features (``precompute_study``).

Not imported by ``difflid`` itself, so that training does not pay for importing scikit-learn and matplotlib.
"""
