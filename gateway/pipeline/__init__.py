"""One road for a sampling request: the strategy runner and the sampler it hands to a
strategy (``strategies.sampling.Sampler``), answer equivalence for votes.
"""
