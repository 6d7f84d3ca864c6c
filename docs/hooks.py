"""mkdocs hook (mkdocs.yml `hooks:`, part of mkdocs itself, no plugin): BENCHMARKS.md stays at the
repository root, where the README and the benchmark scripts point, and becomes the site's
benchmarks.md at build time, so there is no second copy to keep in step.

Its links are relative to the repository root; links into docs/ are rewritten to be relative to
the docs folder. Any other relative link fails `mkdocs build --strict`, as it should: the site
cannot serve it.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

BENCHMARKS = "BENCHMARKS.md"
PAGE = "benchmarks.md"


def on_files(files, config):
    source = Path(config["config_file_path"]).parent / BENCHMARKS
    text = source.read_text(encoding="utf-8").replace("](docs/", "](")
    files.append(File.generated(config, PAGE, content=text))
    return files
