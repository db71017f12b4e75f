"""Every ``getok_core.x.y`` the README and docs/ name exists (a module, or a name in one)."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOTTED = re.compile(r"\bgetok_core(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for name in parts[k:]:
            try:
                obj = getattr(obj, name)
            except AttributeError:
                return False
            except ImportError:  # a lazy name that needs an optional package (ray: the SAM service)
                return True
        return True
    return False


def test_documented_paths_exist():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = sorted({f"{p.relative_to(ROOT)}: {m}" for p in docs for m in DOTTED.findall(p.read_text())
                      if not resolves(m.rstrip("."))})
    assert not missing, missing


def test_the_check_can_fail():
    assert resolves("getok_core.codec.coords.point_pixel")
    assert not resolves("getok_core.rewards.core") and not resolves("getok_core.codec.coords.nope")


#: Paths the docs name that are not this repository's files: a placeholder, EasyR1's own script.
NOT_OURS = {"recipes/X.sh", "scripts/model_merger.py"}
FILE = re.compile(r"\b(?:getok_core|swift_plugin|easyr1_plugin|recipes|bench|scripts|tests|docs)/[\w/.-]*\w")


def test_documented_files_exist():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = sorted({f"{p.relative_to(ROOT)}: {m}" for p in docs for m in FILE.findall(p.read_text())
                      if m not in NOT_OURS and not (ROOT / m).exists() and not (ROOT / "docs" / m).exists()})
    assert not missing, missing
