"""pytest set-up for the whole tree: old module paths (aliases of moved modules) are not collected for doctests."""

from pathlib import Path

_ALIAS_MARK = "sys.modules[__name__] = importlib.import_module("


def _alias_modules() -> list[str]:
    root = Path(__file__).parent / "mvector"
    return [str(p) for p in root.glob("*.py") if _ALIAS_MARK in p.read_text(encoding="utf-8")]


collect_ignore = _alias_modules()
