"""dreamcloth's tests (run with ``python -m pytest -q`` from the repository root)."""
