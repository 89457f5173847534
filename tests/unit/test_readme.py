"""The README's generated parts match the code they describe."""

from __future__ import annotations

from tools.readme import README, render


def test_the_readme_holds_what_tools_readme_would_write() -> None:
    """Each service's configuration table and the module layout are the code's own; on drift: python -m tools.readme."""
    text = README.read_text()
    assert render(text) == text, "README.md is stale: run python -m tools.readme"

