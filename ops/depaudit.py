"""``make lint``'s dependency audit: pip-audit over the installed environment, with a verdict that cannot be a
false green.

pip-audit looks every installed distribution up in a vulnerability service (PyPI's JSON API by default, or OSV).
A package the service cannot answer for is skipped, and pip-audit still prints "No known vulnerabilities found"
and exits 0. Where no service answers at all, that is every package: on this project's machines the reachable
PyPI answers project pages (``/pypi/<name>/json``) but not the per-version pages pip-audit asks for
(``/pypi/<name>/<version>/json``: 404), and OSV's host does not resolve. So this reads pip-audit's JSON report:

- a known vulnerability in an installed package: exit status 1, with the versions that fix it;
- packages that could not be checked: said loudly, with pip-audit's reason; exit status 1 with ``--require``
  (for a machine that reaches the service), else 0;
- everything checked and nothing found: 0.

Run: ``python -m ops.depaudit [--require] [pip-audit options, e.g. --ignore-vuln ID]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: pip-audit's reason for skipping the project itself (installed editable, ``--skip-editable``): not a gap.
_EDITABLE = "distribution marked as editable"


@dataclass
class Verdict:
    """What one pip-audit report says."""

    vulnerable: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    checked: int = 0
    failure: str | None = None  # pip-audit produced no report at all


def read_report(report: dict[str, Any]) -> Verdict:
    """Sort pip-audit's ``--format json`` report into vulnerabilities, unchecked packages and checked ones."""
    verdict = Verdict()
    for dependency in report.get("dependencies", []):
        name = dependency.get("name", "?")
        reason = dependency.get("skip_reason")
        if reason is not None:
            if reason != _EDITABLE:
                verdict.unchecked.append(f"{name}: {reason}")
            continue
        verdict.checked += 1
        for vuln in dependency.get("vulns", []):
            fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed version yet"
            aliases = ", ".join(vuln.get("aliases") or [])
            also = f" ({aliases})" if aliases else ""
            version = dependency.get("version", "?")
            verdict.vulnerable.append(f"{name} {version}: {vuln.get('id')}{also}; fixed in: {fixes}")
    return verdict


def decide(verdict: Verdict, require: bool) -> tuple[int, str]:
    """The exit status and what to print for ``verdict``."""
    lines = []
    if verdict.vulnerable:
        lines.append(f"dependency audit: known vulnerabilities in installed packages ({len(verdict.vulnerable)}):")
        lines += [f"  {v}" for v in verdict.vulnerable]
        lines.append("raise the minimum version in pyproject.toml, or accept an ID with a reason (Makefile).")
    if verdict.failure is not None:
        lines.append(f"dependency audit NOT RUN: pip-audit failed: {verdict.failure}")
    elif verdict.unchecked:
        total = verdict.checked + len(verdict.unchecked)
        lines.append(
            f"dependency audit INCOMPLETE: {len(verdict.unchecked)} of {total} installed packages NOT checked "
            "(the vulnerability service did not answer for them), e.g."
        )
        lines += [f"  {u}" for u in verdict.unchecked[:3]]
    elif not verdict.vulnerable:
        lines.append(f"dependency audit: {verdict.checked} installed packages checked, no known vulnerabilities")
    gap = verdict.failure is not None or bool(verdict.unchecked)
    if gap and not require:
        lines.append("not an error here (AUDIT_REQUIRE=1 makes it one: for a machine that reaches the service)")
    failed = bool(verdict.vulnerable) or (require and gap)
    return (1 if failed else 0), "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.depaudit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--require", action="store_true", help="fail when any package could not be checked")
    args, pip_audit_args = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="hookstream-audit-") as tmp:
        report_path = os.path.join(tmp, "report.json")
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pip_audit", "--skip-editable", "--progress-spinner", "off"),
                *("--format", "json", "--output", report_path, *pip_audit_args),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            with open(report_path, encoding="utf-8") as f:
                verdict = read_report(json.load(f))
        except (OSError, ValueError):  # no report: pip-audit stopped before auditing (e.g. OSV unreachable)
            verdict = Verdict(failure=(done.stderr.strip().splitlines() or ["no output"])[-1][:500])
    status, message = decide(verdict, args.require)
    print(message, file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
