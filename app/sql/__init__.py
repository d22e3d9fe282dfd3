"""Query engine: placeholders, type adaptation, execution with limits, streaming, transactions."""
