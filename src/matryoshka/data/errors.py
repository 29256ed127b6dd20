"""The error every data loader raises for missing or malformed files (see :mod:`matryoshka.errors`)."""

from matryoshka.errors import DataError

__all__ = ["DataError"]
