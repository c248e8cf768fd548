"""Results of a conformance run: one failure per failed check, all raised together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["CheckFailure", "CheckFailed", "ConformanceError", "ConformanceReport", "CheckRunner", "expect"]


@dataclass(frozen=True)
class CheckFailure:
    """One failed check of one component."""

    kind: str
    component: str
    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind} '{self.component}' [{self.check}]: {self.message}"


class CheckFailed(Exception):
    """Raised inside a check to fail it with a message (see :func:`expect`)."""


class ConformanceError(AssertionError):
    """A component failed one or more conformance checks; ``failures`` lists each of them."""

    def __init__(self, kind: str, component: str, failures: list[CheckFailure], passed: list[str]) -> None:
        self.kind = kind
        self.component = component
        self.failures = failures
        self.passed = passed
        total = len(failures) + len(passed)
        lines = [f"{kind} '{component}' failed {len(failures)} of {total} conformance checks:"]
        lines += [f"  - {failure}" for failure in failures]
        super().__init__("\n".join(lines))

    @property
    def checks(self) -> list[str]:
        """Names of the failed checks, in the order they ran."""
        return [failure.check for failure in self.failures]


@dataclass
class ConformanceReport:
    """What a passing run checked: the check names that passed, and those skipped with why."""

    kind: str
    component: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def expect(condition: bool, message: str) -> None:
    """Fail the running check with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


class CheckRunner:
    """Runs named checks, recording failures (and unexpected exceptions) instead of stopping."""

    def __init__(self, kind: str, component: str) -> None:
        self.kind = kind
        self.component = component
        self.failures: list[CheckFailure] = []
        self.report = ConformanceReport(kind, component)

    def run(self, check: str, function: Callable[[], Any]) -> Any:
        """Run one check; return its result, or None when it failed."""
        try:
            result = function()
        except CheckFailed as failed:
            self.fail(check, str(failed))
            return None
        except Exception as exc:  # a crash inside the component is a failed check, not a kit error
            self.fail(check, f"raised {type(exc).__name__}: {exc}")
            return None
        self.report.passed.append(check)
        return result

    def fail(self, check: str, message: str) -> None:
        self.failures.append(CheckFailure(self.kind, self.component, check, message))

    def skip(self, check: str, reason: str) -> None:
        self.report.skipped[check] = reason

    def finish(self) -> ConformanceReport:
        """Raise ConformanceError listing every failure, or return the report."""
        if self.failures:
            raise ConformanceError(self.kind, self.component, self.failures, self.report.passed)
        return self.report
