"""Evaluating classifiers: accuracy on labelled images (overall, per class, confusion) and how sure it is."""
