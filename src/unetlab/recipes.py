"""Built-in YAML files shipped inside the package (and the wheel), addressable by name from any directory.

    load_config("tgs-salt")                          # a recipe: unetlab/configs/tgs-salt.yaml
    unetlab train --data DATA --config tgs-salt
    unetlab configs                                  # every built-in recipe with its one-line description
    unetlab study q52-skips --data DATA              # a study: unetlab/studies/builtin/q52-skips.yaml

A value that is an existing file is that file; a bare name (no folder, no .yaml) is a built-in of
that name. The first comment line of a built-in file is its description.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from unetlab.errors import ConfigError

_SUFFIX = ".yaml"


def _is_bare_name(text: str) -> bool:
    return not any(sep in text for sep in ("/", "\\")) and Path(text).suffix.lower() not in (".yaml", ".yml")


class BuiltinFiles:
    """One folder of built-in YAML files: `kind` names one in messages ("recipe", "study")."""

    def __init__(self, folder: str, kind: str, plural: str, file_kind: str):
        self.folder, self.kind, self.plural, self.file_kind = folder, kind, plural, file_kind

    def _root(self):
        return resources.files("unetlab").joinpath(*self.folder.split("/"))

    def names(self) -> list[str]:
        """The built-in files, by name, sorted."""
        return sorted(entry.name[: -len(_SUFFIX)] for entry in self._root().iterdir()
                      if entry.name.endswith(_SUFFIX))

    def description(self, name: str) -> str:
        """The first comment line of built-in `name`, without its '#'."""
        for line in (self._root() / f"{name}{_SUFFIX}").read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                return line.lstrip("#").strip()
        return ""

    def read(self, path: str | Path) -> tuple[str, str, Path | None]:
        """(YAML text, source, folder of the file or None for a built-in) of `path`: the file when it exists,
        else the built-in of that name; a one-line ConfigError naming the built-ins otherwise."""
        text = str(path)
        if Path(path).is_file():
            return Path(path).read_text(encoding="utf-8"), text, Path(path).resolve().parent
        names = self.names()
        if _is_bare_name(text) and text in names:
            return (self._root() / f"{text}{_SUFFIX}").read_text(encoding="utf-8"), f"{text} (built-in {self.kind})", None
        what = (f"no such {self.file_kind} file or built-in {self.kind}" if _is_bare_name(text)
                else f"{self.file_kind} file not found")
        raise ConfigError(f"{text}: {what}; built-in {self.plural}: {', '.join(names)}; "
                          f"or pass the path of a {'' if self.file_kind == 'config' else self.file_kind + ' '}YAML file")


RECIPES = BuiltinFiles("configs", "recipe", "recipes", "config")
STUDIES = BuiltinFiles("studies/builtin", "study", "studies", "study")

recipe_names = RECIPES.names
recipe_description = RECIPES.description


def read_config_source(path: str | Path) -> tuple[str, str]:
    """(YAML text, source) of `--config path`: a config file, or a built-in recipe by name."""
    text, source, _folder = RECIPES.read(path)
    return text, source
