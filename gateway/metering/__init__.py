"""Prices, energy sources, and the meter that values each request's calls."""
