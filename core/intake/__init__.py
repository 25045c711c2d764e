"""Intake: what keeps hostile files out (read-as-data pre-scans, budgets, isolation) and opens the rest (models, data, inference)."""
