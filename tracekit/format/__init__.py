"""The trace format: the data model (trace.py), the one writer and parser of CWM's wire
text (cwm.py), prompts, tokenizers and the vocabulary checks."""
