"""MkDocs hooks (mkdocs.yml ``hooks:``): pages generated from the code at build time.

* ``<!-- cli-reference -->`` in a page becomes the ``--help`` of ``torchresume`` and of each
  subcommand, rendered from the parser the console script uses (``cli.main.build_parser``),
  so the CLI reference cannot drift from the code.
* The API reference page must hold a ``::: torchresume.NAME`` (or the defining module's path)
  for every name in ``torchresume.__all__`` and ``torchresume.distributed.__all__``, and each of
  those objects must have a docstring; otherwise the build fails (``mkdocs build --strict`` or not).
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

CLI_MARKER = "<!-- cli-reference -->"
API_PAGE = "reference/api.md"


def public_names() -> dict[str, Any]:
    """Every public name (qualified) -> its object: the facade's ``__all__``, distributed's and each
    integration's."""
    import torchresume
    import torchresume.distributed as distributed
    names = {f"torchresume.{n}": getattr(torchresume, n) for n in torchresume.__all__}
    names.update({f"torchresume.distributed.{n}": getattr(distributed, n) for n in distributed.__all__})
    from torchresume.integrations import lightning  # the [lightning] extra, installed with [dev]
    names.update({f"torchresume.integrations.lightning.{n}": getattr(lightning, n) for n in lightning.__all__})
    import torchresume.integrations.transformers as hf  # the [transformers] extra (in dev)
    names.update({f"torchresume.integrations.transformers.{n}": getattr(hf, n) for n in hf.__all__})
    return names


def undocumented() -> list[str]:
    """Public names whose object has no docstring of its own (an inherited one does not count)."""
    missing = []
    for name, obj in public_names().items():
        doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
        if not (doc or "").strip():
            missing.append(name)
    return missing


def cli_reference() -> str:
    """Markdown: the help of ``torchresume`` and of every subcommand, as the terminal shows it."""
    from torchresume.cli.main import build_parser
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width; fix it for the page
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = ["## torchresume", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in subs.choices.items():
        parts += [f"## torchresume {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if page.file.src_uri == API_PAGE:
        documented = set(re.findall(r"^::: (\S+)", markdown, flags=re.M))
        absent = [n for n, obj in public_names().items()
                  if n not in documented and f"{obj.__module__}.{obj.__qualname__}" not in documented]
        if absent:
            raise ValueError(f"{API_PAGE} has no '::: NAME' entry for public name(s): {', '.join(absent)}")
        missing = undocumented()
        if missing:
            raise ValueError(f"public name(s) without a docstring: {', '.join(missing)}")
    return markdown
