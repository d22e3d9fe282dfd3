"""Versioned schema migrations: files, history table, lock, plan, apply and rollback."""
