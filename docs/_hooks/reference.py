"""MkDocs hook (``hooks:`` in mkdocs.yml, no plugin): the generated reference pages.

``reference/config.md`` and ``reference/cli.md`` are rendered from the code at every build
(:mod:`weighted_mtp.docsgen`), so they cannot drift and are not committed.
"""

from __future__ import annotations

from mkdocs.structure.files import File, Files

GENERATED = ("reference/config.md", "reference/cli.md")


def on_files(files: Files, config) -> Files:
    from weighted_mtp.docsgen import cli_ref, config_ref

    for path, render in zip(GENERATED, (config_ref.render, cli_ref.render), strict=True):
        files.append(File.generated(config, path, content=render()))
    return files
