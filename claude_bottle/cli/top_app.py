"""The full-screen view of `claude-bottle top` (Textual). Imported by `top` alone: no other verb pays for it.

The data comes from `work.overview.snapshot` on a worker thread once per interval (the screen never waits on
the engine). Keys act on the selected bottle by running the verbs themselves (cli/top.py `act`), on a
worker thread too; the bell rings when a bottle starts waiting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rich.markup import escape
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from claude_bottle.cli.top_table import COLUMNS, age, row_cells
from claude_bottle.terminal import escape_controls

PRIVATE_NOTE = (
    "approving lets the name through, not a private address: if it resolves to one, the guard still "
    "answers 403 (ssrf). [b]p[/b] approves it as private."
)


def _safe(text: str) -> str:
    """Agent-made text as the screen shows it: control characters escaped, markup shown as text."""
    return escape(escape_controls(text))


class LogScreen(Screen[None]):
    """The selected bottle's egress log, its last lines; escape or q goes back."""

    BINDINGS: ClassVar = [Binding("escape,q", "app.pop_screen", "back")]

    def __init__(self, slug: str, lines: list[str]) -> None:
        super().__init__()
        self.slug, self.lines = slug, lines

    def compose(self) -> ComposeResult:
        yield Static(f"[b]{_safe(self.slug)}[/b]: egress log (last {len(self.lines)} lines) - escape: back")
        yield Static(_safe("\n".join(self.lines) or "(nothing yet)"), id="log")
        yield Footer()


class TopApp(App[tuple[str, str] | None]):
    TITLE = "claude-bottle top"
    CSS = """
    #summary { height: 1; background: $boost; }
    #bottles { height: 1fr; }
    #detail { height: auto; max-height: 9; border-top: solid $accent; }
    """
    BINDINGS: ClassVar = [
        Binding("a", "approve", "approve"),
        Binding("p", "approve_private", "as private", show=False),
        Binding("d", "deny", "deny"),
        Binding("l", "log", "egress log"),
        Binding("t", "attach", "attach"),
        Binding("s", "stop", "stop"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(
        self, source: Callable[..., list[Any]], *, interval: float, act: Callable[..., tuple[int, str]]
    ) -> None:
        super().__init__()
        from claude_bottle.work.overview import Tallies

        self.source, self.interval, self.act = source, interval, act
        self.tallies = Tallies()
        self.views: list[Any] = []
        self.waiting: set[str] = set()
        self.message = ""

    def compose(self) -> ComposeResult:
        # Held, not queried: a screen pushed on top (the log) must not hide them from the refresh.
        self.summary = Static("", id="summary")
        self.table: DataTable[str] = DataTable(id="bottles", cursor_type="row", zebra_stripes=True)
        self.detail = Static("", id="detail")
        yield self.summary
        yield self.table
        yield self.detail
        yield Footer()

    def on_mount(self) -> None:
        self.table.add_columns(*COLUMNS)
        self.refresh_views()
        self.set_interval(self.interval, self.refresh_views)

    @work(thread=True, exclusive=True, group="refresh")
    def refresh_views(self) -> None:
        views = self.source(self.tallies)
        self.call_from_thread(self.show, views)

    def show(self, views: list[Any]) -> None:
        table = self.table
        chosen = self.selected()
        self.views = views
        table.clear()
        for v in views:
            table.add_row(*(_safe(c) for c in row_cells(v)), key=v.slug)
        slugs = [v.slug for v in views]
        if chosen is not None and chosen.slug in slugs:
            table.move_cursor(row=slugs.index(chosen.slug))
        waiting = {v.slug for v in views if v.state == "waiting"}
        if waiting - self.waiting:
            self.ring(sorted(waiting - self.waiting))
        self.waiting = waiting
        counts = {s: sum(v.state == s for v in views) for s in ("running", "waiting", "crashed")}
        summary = (
            f" {len(views)} bottles: {counts['running']} running, {counts['waiting']} waiting, "
            f"{counts['crashed']} crashed"
        )
        self.summary.update(_safe(summary + (f"  |  {self.message}" if self.message else "")))
        self.show_detail()

    def ring(self, slugs: list[str]) -> None:
        """Someone is needed: the bell, and OSC 9 (a terminal that shows desktop notifications for it, as
        iTerm2, kitty, WezTerm and Windows Terminal do, raises one; others ignore it). Over SSH too."""
        self.bell()
        text = escape_controls(f"claude-bottle: {', '.join(slugs)} waiting")[:200].replace(";", ",")
        driver = self._driver
        if driver is not None and not self.is_headless:
            driver.write(f"\x1b]9;{text}\x07")

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    def selected(self) -> Any | None:
        table = self.table
        if not self.views or table.cursor_row < 0 or table.cursor_row >= len(self.views):
            return None
        return self.views[table.cursor_row]

    def show_detail(self) -> None:
        v = self.selected()
        detail = self.detail
        if v is None:
            detail.update("no bottles in this namespace (claude-bottle start AGENT --detach)")
            return
        e = v.egress
        head = (
            f"[b]{_safe(v.slug)}[/b] {_safe(v.backend)}/{_safe(v.isolation)} {_safe(v.status)} for {age(v.since)}"
            f"  egress {e.allowed} allowed, {e.denied} denied, last {_safe(e.last_host or '-')}"
            + (f"  ports {_safe(', '.join(v.ports))}" if v.ports else "")
        )
        if not v.requests:
            detail.update(head + ("\n" + _safe(v.doing) if v.doing else ""))
            return
        r = v.requests[0]
        more = f" (+{len(v.requests) - 1} more)" if len(v.requests) > 1 else ""
        ask = f"\n[b]waits:[/b] {_safe(r.label)}{more}: {_safe(r.reason or 'no reason given')}"
        note = f"\n{PRIVATE_NOTE}" if r.kind == "egress" else "\napproving rebuilds its image and resumes its session"
        detail.update(head + ask + note)

    # -- actions ---------------------------------------------------------------------------------
    def _request(self) -> tuple[Any, Any] | None:
        v = self.selected()
        if v is None or not v.requests:
            self.notify("nothing waits for an answer here", severity="warning")
            return None
        return v, v.requests[0]

    def action_approve(self) -> None:
        if (got := self._request()) is not None:
            v, r = got
            self.run_verb(f"granted {r.label}", "grant", v.slug, "--request", r.id, "--detach")

    def action_approve_private(self) -> None:
        if (got := self._request()) is not None:
            v, r = got
            self.run_verb(f"granted {r.label} (private)", "grant", v.slug, "--request", r.id, "--private", "--detach")

    def action_deny(self) -> None:
        if (got := self._request()) is not None:
            v, r = got
            self.run_verb(f"denied {r.label}", "deny", v.slug, "--request", r.id)

    def action_stop(self) -> None:
        if (v := self.selected()) is not None:
            self.run_verb(f"stopped {v.slug}", "stop", v.slug)

    def action_attach(self) -> None:
        if (v := self.selected()) is not None:
            self.exit(("attach", v.slug))

    def action_log(self) -> None:
        if (v := self.selected()) is not None:
            code, text = self.act("logs", v.slug, "--egress", whole=True)
            lines = text.splitlines()[-200:] if code == 0 else [text]
            self.push_screen(LogScreen(v.slug, lines))

    @work(thread=True, group="verbs")
    def run_verb(self, done: str, *verb: str) -> None:
        code, last = self.act(*verb)
        self.message = done if code == 0 else f"{' '.join(verb[:2])}: {last}"
        self.call_from_thread(self.notify, self.message, severity="information" if code == 0 else "error")
        self.call_from_thread(self.refresh_views)
