"""The fixtures under tests/fixtures: recipes, sdists, and recipe directories made of them."""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURES = Path(__file__).parent.parent / "fixtures"
FIXTURE_RECIPES = FIXTURES / "recipes"
MORE_RECIPES = FIXTURES / "more"
REPO_RECIPES = Path(__file__).parent.parent.parent / "recipes"
FIXTURE_SDIST = FIXTURES / "kilnfix-1.0.0.tar.gz"
FIXTURE_SDISTS = sorted(FIXTURES.glob("*.tar.gz"))


def kilnfix_recipe(**replace: str) -> str:
    """The fixture's kilnfix recipe, its source made absolute, with text replaced."""
    text = (FIXTURE_RECIPES / "kilnfix.yaml").read_text()
    text = text.replace("../kilnfix-{version}.tar.gz", str(FIXTURES / "kilnfix-{version}.tar.gz"))
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def recipes_dir(dest: Path, *recipes: tuple[str, str]) -> Path:
    """A recipes directory: the fixture toolchain table and the given (file name, text) pairs."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURE_RECIPES / "toolchains.yaml", dest / "toolchains.yaml")
    for name, text in recipes:
        (dest / name).write_text(text)
    return dest
