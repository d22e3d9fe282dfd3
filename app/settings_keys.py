"""API keys as the settings give them: one key of MIRRORPOOL_API_KEYS (`ApiKeyConfig`), and
reading the same JSON list from MIRRORPOOL_API_KEYS_FILE."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class ApiKeyConfig(BaseModel):
    """One API key: its id, the hex SHA-256 of the key, its scopes, an optional role."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    scopes: list[Literal["read", "write", "migrate", "admin"]] = Field(min_length=1)
    role: str | None = Field(None, min_length=1, max_length=63)


def read_keys_file(path: Path) -> list[ApiKeyConfig]:
    """The keys of a keys file (a JSON list of ApiKeyConfig); OSError when it cannot be read,
    pydantic's ValidationError when it is not such a list."""
    return TypeAdapter(list[ApiKeyConfig]).validate_json(path.read_text())
