"""The README's generated parts: each service's configuration table and the layout of ``shared/`` and
``services/``, both from the code itself (the config declarations, each module's docstring).

``python -m tools.readme`` rewrites them in place; ``tests/unit/test_readme.py`` fails while the
README differs from what this would write, so neither can drift from the code.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LAYOUT_START, LAYOUT_END = "<!-- layout: python -m tools.readme -->", "<!-- /layout -->"


def config_tables() -> dict[str, str]:
    os.environ.setdefault("APP_ENV", "development")
    from services.auth.config import AuthConfig
    from services.collect.config import CollectConfig
    from services.dispatch.config import DispatchConfig
    from services.push.config import PushConfig
    from services.webhooks.config import WebhooksConfig

    return {name: cls.table() for name, cls in
            (("auth", AuthConfig), ("collect", CollectConfig), ("dispatch", DispatchConfig), ("push", PushConfig),
             ("webhooks", WebhooksConfig))}


def summary(path: Path) -> str:
    """The first sentence of a module's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return first if len(first) <= 160 else first[:first.find(". ") + 1] or first


# The folders in the order a message meets them: accepted, modelled, encoded, stored and handed over, forwarded to
# the nodes holding its users, written to their sockets (whose tokens auth checks); infrastructure last.
PATH_ORDER = ("services/collect", "shared/model", "shared/wire", "shared/delivery", "services/dispatch", "shared/cluster",
              "services/push", "services/webhooks", "services/auth", "shared/infra")


def layout() -> str:
    """One row per folder (its package docstring) and per module of ``shared/`` and the services, folders in
    ``PATH_ORDER``, modules in tree order within each."""
    rows = []
    for folder in PATH_ORDER:
        package = ROOT / folder / "__init__.py"
        if ast.get_docstring(ast.parse(package.read_text())):
            rows.append(f"| **`{folder}/`** | {summary(package).replace('|', '/')} |")
        modules = sorted(p for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py")
        rows += [f"| `{p.relative_to(ROOT)}` | {summary(p).replace('|', '/')} |" for p in modules]
    return "\n".join(["| module | what it answers |", "| --- | --- |", *rows])


def render(text: str) -> str:
    for name, table in config_tables().items():
        text, found = re.subn(rf"### {name}\n\n(\|.*\|\n)+", lambda _: f"### {name}\n\n{table}\n", text)
        if not found:
            raise SystemExit(f"README.md has no '### {name}' configuration table")
    before, _, rest = text.partition(LAYOUT_START + "\n")
    _, _, after = rest.partition(LAYOUT_END)
    if not rest:
        raise SystemExit(f"README.md has no {LAYOUT_START} marker")
    return f"{before}{LAYOUT_START}\n{layout()}\n{LAYOUT_END}{after}"


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
