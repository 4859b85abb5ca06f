"""Speed and accuracy benchmarks, run by ``dreamcloth bench``."""
