"""Broker backends, one module per technology: sqlite (embedded default), redis, sqs."""
