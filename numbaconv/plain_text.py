"""Docstrings' reST inline markup as plain text, for the terminal (``numbaconv layers``, help).

Docstrings are written for Sphinx: ``literal``, :class:`~a.b.C`, `interpreted`, *emphasis*.
Printed as they are, the backticks and roles are noise; :func:`plain_text` keeps what a reader
of the rendered page would see.
"""

from __future__ import annotations

import re

# One pass, left to right, so that a literal's contents (``*args``) are not read again.
_INLINE = re.compile(
    r"(?P<role>:[\w+.-]+(?::[\w+.-]+)*:)`(?P<target>[^`]+)`"  # :class:`~a.b.C`, :py:func:`f`
    r"|``(?P<literal>.+?)``"
    r"|`(?P<interpreted>[^`]+)`_{0,2}"  # `x`, and links `text <url>`_
    r"|(?<![\w*])\*\*(?P<strong>[^\s*](?:.*?[^\s*])?)\*\*(?![\w*])"
    r"|(?<![\w*])\*(?P<emphasis>[^\s*](?:.*?[^\s*])?)\*(?![\w*])")
_TITLED = re.compile(r"^(?P<title>.*?)\s*<[^<>]+>$")  # "title <target>"


def _shown(match: re.Match) -> str:
    if match["role"]:
        target = match["target"].lstrip("!")
        titled = _TITLED.match(target)
        if titled and titled["title"]:
            return titled["title"]
        return target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target
    if match["interpreted"] is not None:
        titled = _TITLED.match(match["interpreted"])
        return titled["title"] if titled and titled["title"] else match["interpreted"]
    return match["literal"] or match["strong"] or match["emphasis"]


def plain_text(text: str) -> str:
    """``text`` with reST inline markup replaced by what it shows, e.g. "``x``" -> "x",
    ":class:`~a.b.C`" -> "C", ":func:`f`" -> "f", "`x`" -> "x", "*x*" -> "x"."""
    return _INLINE.sub(_shown, text)


def first_line(obj) -> str:
    """The first line of ``obj``'s docstring as plain text ('' without a docstring)."""
    return plain_text((obj.__doc__ or "").strip().split("\n")[0])
