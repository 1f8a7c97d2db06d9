"""Result-store backends, one module per technology: sqlite (embedded default), postgresql."""
