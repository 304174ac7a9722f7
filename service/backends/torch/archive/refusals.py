"""How the archive checks refuse: ``UnsafeArchive`` to the caller, ``Refused`` within."""


class UnsafeArchive(ValueError):
    """Loading the archive would need more than weights-only unpickling, or would evaluate
    part of it as code."""


class Refused(Exception):
    """A string of a program that torch would evaluate; its message says why."""


def short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 300 else f"{text[:300]}..."
