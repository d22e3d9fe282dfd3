"""The quick start's demo for `make run`: named queries over the local pair's demo tables
(app/devdb/logins.py's DEMO_SQL), served when the project has no queries folder of its own."""

from pathlib import Path

QUERIES_DIR = Path(__file__).parent / "queries"
