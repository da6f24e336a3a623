"""One road for a sampling request (``road``: budgets, then the strategy, then the answer):
the strategy runner, the sampler it hands to a strategy (``strategies.sampling.Sampler``), and
answer equivalence for votes.
"""
