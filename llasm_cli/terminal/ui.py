"""Terminal rendering with rich: streamed answers, Markdown at the end, stats tables."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def stream_answer(pieces: Iterable[str], out: Console = console) -> str:
    """Show text as it streams; on a terminal re-render it as Markdown when it ends."""
    answer = ""
    if not out.is_terminal:
        for piece in pieces:
            if not answer:
                piece = piece.lstrip()
            answer += piece
            out.file.write(piece)
            out.file.flush()
        out.file.write("\n")
        return answer
    with Live(Text(""), console=out, refresh_per_second=20, transient=False, vertical_overflow="visible") as live:
        for piece in pieces:
            first = not answer
            answer = (answer + piece).lstrip()
            live.update(Text(answer), refresh=first and bool(answer))  # the first words at once, not at the next tick
        live.update(Markdown(answer) if answer.strip() else Text("(no answer)", style="dim"))
    return answer


def stats_table(stats: dict, title: str = "timings") -> Table:
    from rich.markup import escape

    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    for key, value in stats.items():
        if key == "heard" and value is None:
            continue  # a model that hears no transcript
        shown = f"{value:.1f}" if isinstance(value, float) else ("n/a" if value is None else escape(str(value)))
        table.add_row(key.replace("_", " "), shown)
    return table


def error(message: str) -> None:
    """One line on stderr: what went wrong and what to do (its text is literal: "pip install 'llasm[train]'"
    keeps its brackets)."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def note(message: str, out: Console = err_console) -> None:
    """One line (on stderr unless ``out`` says where) about something llasm repaired or chose for the user (it
    goes on)."""
    from rich.markup import escape

    out.print(f"[yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)
