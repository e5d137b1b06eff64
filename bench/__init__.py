"""hookstream's benchmarks: ``python -m bench`` (``make bench``) runs hookstream against its baselines."""
