"""Exception types the CLI knows how to report without a traceback.

Every error a user can cause (bad config, missing plugin, stopped Docker
daemon, missing API key, exhausted budget) is a :class:`TermigenError` whose
message says what is wrong and what to do; the CLI prints it and exits with
its ``exit_code``.
"""

from __future__ import annotations

from dataclasses import dataclass


class TermigenError(Exception):
    """A failure the user can act on; printed without a traceback."""

    exit_code: int = 2


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file, located by its dotted path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(TermigenError):
    """A config file (or override) failed validation; carries every issue at once."""

    def __init__(self, issues: list[ConfigIssue], source: str | None = None) -> None:
        self.issues = issues
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(issues)} problem(s){where}:"] + [f"  {issue}" for issue in issues]
        super().__init__("\n".join(lines))


class PluginError(TermigenError):
    """A plugin could not be loaded or registered something inconsistent."""


class ComponentNotFound(TermigenError):
    """A config or command names a component no plugin provides."""


class InfrastructureError(TermigenError):
    """Something outside the task failed: the model API, the container engine, the disk, the network.

    Kept apart from task outcomes everywhere (store, report, exit code), so an
    outage never reads as a bad task. Such failures are retried on resume.
    """

    #: True when going on cannot help (an API key the provider refuses): the run stops at once.
    stops_run: bool = False

    def __init__(self, message: str, *, stops_run: bool | None = None) -> None:
        super().__init__(message)
        if stops_run is not None:
            self.stops_run = stops_run


class ExecutorUnavailable(InfrastructureError):
    """The container engine cannot be reached (daemon stopped, socket missing)."""

    exit_code = 4


class MissingSecret(TermigenError):
    """A config references an environment variable (or API key) that is not set."""


class RunDirectoryMismatch(TermigenError):
    """A run directory was created by a different config; resuming it would mix results."""


class BudgetExceeded(TermigenError):
    """The run's USD budget is spent; the run stops cleanly and can be resumed."""

    exit_code = 3


class Reject(Exception):
    """Raised by a stage to reject an item on purpose (quality gate), with a reason.

    Rejected items are final: unlike failures they are not retried on resume.
    """

    def __init__(self, reason: str, details: dict | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details or {}


class ParseError(Exception):
    """Model output did not parse into the expected structure (retried with the error)."""


class Cancelled(TermigenError):
    """The run is stopping (Ctrl-C, the budget, an infrastructure stop): no new paid model call starts.

    Raised by the LLM router instead of sending a request; answers already in the
    store still replay. The runner leaves the step pending, so a resume redoes it,
    replaying every call answered before the stop.
    """

    exit_code = 130
