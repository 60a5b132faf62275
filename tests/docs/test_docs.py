"""The docs stay true: every seed command is documented, the Layout section of
docs/architecture.md lists every module of the package where it is, the prompt template
shown is the code's, the cluster layout names every path the cluster profiles use, and
README stays short and links only to pages that exist."""

from __future__ import annotations

import fnmatch
import re

import yaml

from tests.conftest import REPO
from weighted_mtp.__main__ import build_parser
from weighted_mtp.config.loader import compose
from weighted_mtp.data.collate import format_prompt

DOCS = REPO / "docs"
README = (REPO / "README.md").read_text()


def pages() -> dict[str, str]:
    return {
        str(p.relative_to(DOCS)): p.read_text()
        for p in DOCS.rglob("*.md")
        if not p.relative_to(DOCS).parts[0].startswith("_")
    }


def test_every_seed_cli_command_is_documented() -> None:
    text = "\n".join(pages().values())
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    used = set(re.findall(r"python -m weighted_mtp ([a-z-]+)", text)) - {"--help"}
    assert used <= set(sub.choices), used - set(sub.choices)
    assert set(sub.choices) <= used, set(sub.choices) - used  # every command is documented


def layout_entries() -> dict[str, str]:
    """The Layout block's ``weighted_mtp/`` entries: name (``cli.py``, ``training/``) ->
    its text, continuation lines included."""
    text = (DOCS / "architecture.md").read_text()
    block = text.split("## Layout", 1)[1].split("```")[1]
    lines = block.split("weighted_mtp/\n", 1)[1].splitlines()
    entries: dict[str, str] = {}
    name = None
    for line in lines:
        if not line.startswith("  "):  # the next top-level item (tests/, ...)
            break
        if line[2] != " ":
            name, _, text = line.strip().partition(" ")
            entries[name] = text
        else:
            entries[name] += " " + line.strip()
    return entries


def test_layout_lists_every_module_where_it_is() -> None:
    package = REPO / "weighted_mtp"
    entries = layout_entries()
    top = {n for n in entries if n.endswith(".py")}
    on_disk_top = {p.name for p in package.glob("*.py")} - {"__init__.py"}
    assert top == on_disk_top, (
        f"docs/architecture.md Layout: missing {on_disk_top - top}, gone {top - on_disk_top}"
    )
    folders = {n.rstrip("/") for n in entries if n.endswith("/")}
    on_disk = {str(p.parent.relative_to(package)) for p in package.rglob("__init__.py")} - {"."}
    assert folders == on_disk
    for folder in folders:
        named = re.findall(r"(?<![/\w])([\w*]+\.py)\b", entries[folder + "/"])
        files = {p.name for p in (package / folder).glob("*.py")}
        for pattern in named:  # every name stands for a file there ...
            assert fnmatch.filter(files, pattern), f"Layout: {folder}/{pattern} is gone"
        for f in files - {"__init__.py"}:  # ... and every file has its name
            assert any(fnmatch.fnmatch(f, pat) for pat in named), f"{folder}/{f} not in Layout"


def test_prompt_template_is_the_codes() -> None:
    blocks = re.findall(r"```text\n(.*?)```", (DOCS / "data.md").read_text(), flags=re.S)
    assert format_prompt("{instruction}", "{input}") in blocks
    assert format_prompt("{instruction}") in blocks  # no ### Input: when input is empty


def test_cluster_layout_names_every_profile_path() -> None:
    text = (DOCS / "cluster.md").read_text()
    for profile in ("vessl", "vessl_a100_40gb"):
        conf = compose(["stage=verifiable", f"profile={profile}"])
        paths = [
            conf.models.policy.path,
            conf.models.policy.tokenizer_path,
            conf.models.reference.path,
            conf.dataset.train,
            conf.dataset.validation,
            conf.experiment.critic_checkpoint,
        ]
        for path in filter(None, paths):
            assert path.startswith("storage/")
            *parents, leaf = path.removeprefix("storage/").split("/")
            for part in [*parents, leaf]:  # each level of the path is in the layout tree
                assert re.search(rf"^\s+{re.escape(part)}/?\s", text, flags=re.M), (profile, path)


def test_readme_is_short_and_links_to_pages() -> None:
    assert len(README.splitlines()) <= 150
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (REPO / link).is_file(), link
    linked = set(re.findall(r"\]\(docs/([^)#]+)", README))
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    top_pages = {v for item in nav for v in item.values() if isinstance(v, str)}
    assert top_pages - {"index.md"} <= linked, top_pages - linked


def test_no_page_repeats_a_readme_paragraph() -> None:
    paragraphs = [p.strip() for p in README.split("\n\n") if len(p.strip()) > 200]
    for name, text in pages().items():
        flat = " ".join(text.split())
        for p in paragraphs:
            assert " ".join(p.split()) not in flat, f"{name} repeats README: {p[:60]}"
