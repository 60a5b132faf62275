"""``python -m weighted_mtp.docsgen [OUT_DIR]``: write the generated references
(``config.md``, ``cli.md``; default ``docs/reference``) and report fields without a
meaning. The docs build makes the same pages itself (``docs/_hooks/reference.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

from weighted_mtp.docsgen import cli_ref, config_ref


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "docs/reference")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.md").write_text(config_ref.render())
    (out / "cli.md").write_text(cli_ref.render())
    print(f"wrote {out / 'config.md'} and {out / 'cli.md'}")
    missing = config_ref.undocumented()
    if missing:
        print("fields without a meaning (add them to weighted_mtp/docsgen/fields.py):")
        print("\n".join(f"  {name}" for name in missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
