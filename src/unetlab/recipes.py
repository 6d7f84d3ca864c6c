"""The built-in run recipes: `unetlab/configs/<name>.yaml`, shipped inside the package (and the wheel).

    load_config("tgs-salt")                          # from any directory
    unetlab train --data DATA --config tgs-salt
    unetlab configs                                  # every built-in name with its one-line description

A `--config` value that is an existing file is that file; a bare name (no folder, no .yaml) is a
built-in recipe. The first comment line of a recipe is its description.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from unetlab.errors import ConfigError

_SUFFIX = ".yaml"


def _folder():
    return resources.files("unetlab") / "configs"


def recipe_names() -> list[str]:
    """The built-in recipes, by name, sorted."""
    return sorted(entry.name[: -len(_SUFFIX)] for entry in _folder().iterdir() if entry.name.endswith(_SUFFIX))


def recipe_description(name: str) -> str:
    """The first comment line of recipe `name`, without its '#'."""
    for line in (_folder() / f"{name}{_SUFFIX}").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def _is_bare_name(text: str) -> bool:
    return not any(sep in text for sep in ("/", "\\")) and Path(text).suffix.lower() not in (".yaml", ".yml")


def read_config_source(path: str | Path) -> tuple[str, str]:
    """(YAML text, source) of `--config path`: the file at `path` when it exists, else the built-in recipe
    of that name; a one-line ConfigError naming the built-in recipes otherwise."""
    text = str(path)
    if Path(path).is_file():
        return Path(path).read_text(encoding="utf-8"), text
    names = recipe_names()
    if _is_bare_name(text) and text in names:
        return (_folder() / f"{text}{_SUFFIX}").read_text(encoding="utf-8"), f"{text} (built-in recipe)"
    what = "no such config file or built-in recipe" if _is_bare_name(text) else "config file not found"
    raise ConfigError(f"{text}: {what}; built-in recipes: {', '.join(names)}; or pass the path of a YAML file")
