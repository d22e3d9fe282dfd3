"""The tutorial approach, as the baseline to beat: Flask + psycopg2's pool, under gunicorn.

Environment: BENCH_DSN. Run: gunicorn -w 2 --threads 8 tests.bench.baseline_app:app
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request
from psycopg2.pool import ThreadedConnectionPool

app = Flask(__name__)
pool = ThreadedConnectionPool(1, 10, os.environ["BENCH_DSN"])


def _run(statements: list[dict[str, Any]], transaction: bool) -> list[Any]:
    conn = pool.getconn()
    try:
        conn.autocommit = not transaction
        results = []
        with conn.cursor() as cur:
            for statement in statements:
                # psycopg2 takes %s placeholders: the tutorials' way of binding parameters.
                cur.execute(statement["sql"].replace("$1", "%s"), statement.get("params") or [])
                results.append(cur.fetchall() if cur.description else [])
        if transaction:
            conn.commit()
        return results
    except Exception:
        if transaction:
            conn.rollback()
        raise
    finally:
        pool.putconn(conn)


@app.post("/v1/query")
def query() -> Any:
    body = request.get_json()
    rows = _run([body], transaction=False)[0]
    return jsonify(
        {
            "rows": [
                [str(v) if isinstance(v, int) and abs(v) > 2**53 else v for v in r] for r in rows
            ]
        }
    )


@app.post("/v1/transaction")
def transaction() -> Any:
    body = request.get_json()
    results = _run(body["statements"], transaction=True)
    return jsonify({"results": [{"rows": rows} for rows in results]})
