"""Predicting traces with a model: the predictor and sessions (predict.py), the neural
debugger and chat."""
