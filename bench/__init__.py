"""gdx benchmarks: figures printed beside baselines measured in the same run (not pass/fail)."""
