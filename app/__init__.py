"""mirrorpool: PostgreSQL over HTTP with pooling, migrations and mirror failover."""

__version__ = "0.1.0"
