"""Where programs come from: the dataset sources (sources.py), the program generators
(synthetic, basic, methods; their shared harness in generators.py), doctests and
test suites cut into episodes."""
