"""Tables that fit their reader: a rich table on a terminal, plain TSV (header first) when piped or redirected.

A pipe (`quarantine list | less`, cron mail, `cut -f`) gets every column whole, one row per line, tab-separated;
a terminal gets a table as wide as the terminal, wrapping long cells instead of squeezing columns away.
Scripts that need types use `--json` instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TextIO


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty()


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]], *,
                right: Sequence[str] = (), header: bool = True, stream: TextIO | None = None) -> None:
    """One table: rich on a terminal (titled), TSV otherwise (no title, so the output is data only)."""
    stream = stream or sys.stdout
    if not is_terminal(stream):
        if header:
            print("\t".join(columns), file=stream)
        for row in rows:
            print("\t".join(_cell(v) for v in row), file=stream)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=header)
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column in right else "left")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    Console(file=stream).print(table)
