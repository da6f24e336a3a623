"""API keys and their stores (memory, Redis), rate limits and budgets, the response cache."""
