"""Tests of what ships beside the code: the image, the lock, deploy/ (compose, Kubernetes,
Prometheus). They run offline, with no Docker engine and no cluster."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
