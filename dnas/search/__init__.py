"""Searching: the Strategy interface and its strategies, cost tables, the architecture
objective, budgets, derive, sweep, and the search run."""
