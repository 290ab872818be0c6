"""Analyses of the frozen feature sources (``network_prior``): the h-space probe (``probe``).

Not imported by ``difflid`` itself, so that training does not pay for importing scikit-learn and matplotlib.
"""
