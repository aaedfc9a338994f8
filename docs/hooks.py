"""MkDocs hook: show the doctest examples of docstrings as Python console blocks.

The docstrings follow the standard library's habit of bare ``>>>`` examples (they are doctests). Markdown would
read those lines as nested block quotes, and ``x[i]`` in them as a reference link, which the strict build
refuses. This preprocessor wraps each run of doctest lines, up to the blank line that ends it, in a fenced
``pycon`` block, leaving fenced blocks alone; it is added to the extensions before mkdocstrings copies them, so
that docstrings rendered into the API reference get it too.
"""

from __future__ import annotations

from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

FENCES = ("```", "~~~")


class DoctestBlocks(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        fence: str | None = None
        in_test = False
        for line in lines:
            stripped = line.strip()
            if in_test:
                if not stripped:
                    out += ["```", line]
                    in_test = False
                else:
                    out.append(line)
                continue
            if fence is not None:
                if stripped.startswith(fence):
                    fence = None
            elif stripped.startswith(FENCES):
                fence = stripped[:3]
            elif line.startswith(">>>"):
                out += ["", "```pycon"]
                in_test = True
            out.append(line)
        if in_test:
            out.append("```")
        return out


class DoctestExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        # Before the fenced-code preprocessors (priority 25), after whitespace normalisation (30).
        md.preprocessors.register(DoctestBlocks(md), "manycore_doctests", 27)


@event_priority(100)  # before mkdocstrings reads the extension list
def on_config(config: Any) -> Any:
    config.markdown_extensions.append(DoctestExtension())
    return config
