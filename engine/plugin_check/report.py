"""The check report: one line per check (pass, fail or skip, with the reason), and its table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``status`` is pass, fail or skip; ``reason`` says what was seen."""

    name: str
    status: str
    reason: str


@dataclass
class ModelReport:
    """The checks of one model."""

    model: str
    version: str
    checks: list[Check] = field(default_factory=list)


@dataclass
class PluginReport:
    """What ``scanstream plugins check NAME`` found: plugin-level checks, then each model's."""

    target: str
    plugin: str
    source: str
    checks: list[Check] = field(default_factory=list)
    models: list[ModelReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed (skips do not fail)."""
        return not any(c.status == FAIL for c in self.all_checks())

    def all_checks(self) -> Iterator[Check]:
        yield from self.checks
        for model in self.models:
            yield from model.checks

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready document (``--json``)."""
        return {"target": self.target, "plugin": self.plugin, "source": self.source, "ok": self.ok,
                "checks": [asdict(c) for c in self.checks],
                "models": [{"model": m.model, "version": m.version, "checks": [asdict(c) for c in m.checks]}
                           for m in self.models]}


class CheckFailed(Exception):
    """A check's finding: the message is the reason shown to the author."""


def error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


STATUS_STYLE = {PASS: "[green]PASS[/green]", FAIL: "[bold red]FAIL[/bold red]", SKIP: "[yellow]SKIP[/yellow]"}


def render(report: PluginReport) -> Any:
    """A rich table of every check."""
    from rich.markup import escape
    from rich.table import Table

    verdict = "[green]all checks pass[/green]" if report.ok else "[bold red]some checks fail[/bold red]"
    table = Table(title=f"plugin {escape(report.plugin)} ({escape(report.source)}): {verdict}",
                  title_justify="left")
    table.add_column("model")
    table.add_column("check")
    table.add_column("result")
    table.add_column("reason", overflow="fold")
    for check in report.checks:
        table.add_row("(plugin)", check.name, STATUS_STYLE[check.status], escape(check.reason))
    for model in report.models:
        for index, check in enumerate(model.checks):
            label = f"{escape(model.model)} {escape(model.version)}" if index == 0 else ""
            table.add_row(label, check.name, STATUS_STYLE[check.status], escape(check.reason))
    if not report.models and report.checks and all(c.status == PASS for c in report.checks):
        table.caption = "the plugin registers no model"
    return table
