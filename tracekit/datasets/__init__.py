"""Dataset builds: the build itself (build.py), its files (Parquet, manifest, stats),
the Ray engine and the rows of test-suite episodes."""
