"""Training a model on trace datasets, in one place: the settings and their defaults
(config.py, importable without torch), the data (data.py: tokenizer, packing,
leakage), the loop over token ids (loop.py) and a run end to end (run.py:
validation, checkpoint, card, bundling). `python -m tracekit.training bundle RUN DEST`
copies a run's checkpoint to the bundled model's place."""
