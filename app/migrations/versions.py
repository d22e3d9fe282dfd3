"""Migration versions as folders spell them: `3`, `0003`, `1.1`, `1_1`, `2023.01.02`.

A version is one or more whole numbers separated by dots (or underscores, as Flyway allows),
compared part by part as numbers, a missing part counting as 0: 1.2 < 1.10 < 2, and 1.0 is 1.
This is Flyway's ordering, and for single numbers (mirrorpool, golang-migrate, dbmate's
timestamps) it is plain numeric order.
"""

from __future__ import annotations

import re
from functools import total_ordering

_SPELLING = re.compile(r"\d+(?:[._]\d+)*")


@total_ordering
class Version:
    """One version: `text` as shown (a single number without its leading zeros, dotted ones
    as spelled with `_` read as `.`), ordered and compared by its numeric parts."""

    __slots__ = ("key", "text")

    def __init__(self, text: str, key: tuple[int, ...]) -> None:
        self.text = text
        # The parts without trailing zeros, so 1.0 and 1 are one version.
        self.key = key

    @classmethod
    def parse(cls, spelled: str) -> Version:
        """The version a file name or a `--target` spells; ValueError when it is not one."""
        spelled = spelled.strip()
        if not _SPELLING.fullmatch(spelled):
            raise ValueError(f"{spelled!r} is not a version (like 3, 1.2 or 2023.01.02)")
        parts = [int(part) for part in re.split(r"[._]", spelled)]
        text = str(parts[0]) if len(parts) == 1 else spelled.replace("_", ".")
        while len(parts) > 1 and parts[-1] == 0:
            parts.pop()
        return cls(text, tuple(parts))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.key == other.key

    def __lt__(self, other: Version) -> bool:
        width = max(len(self.key), len(other.key))
        return self.key + (0,) * (width - len(self.key)) < other.key + (0,) * (
            width - len(other.key)
        )

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.text

    def __format__(self, spec: str) -> str:
        return format(self.text, spec)

    def __repr__(self) -> str:
        return f"Version({self.text!r})"

    @property
    def canonical(self) -> str:
        """The spelling history rows use, one per version (`1.1` for 1_1, 1.01 and 1.1.0)."""
        return ".".join(str(part) for part in self.key)

    @property
    def number(self) -> int | None:
        """The version as one integer, when it is a single number (for /metrics)."""
        return self.key[0] if len(self.key) == 1 else None


ZERO = Version("0", (0,))
