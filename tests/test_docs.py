"""The documentation site (mkdocs.yml, docs/): the generated reference pages are current, the site builds
with `mkdocs build --strict` (no broken link or anchor), the reference names every config key and CLI
option, and every `unetlab` command line in the site's own pages parses and its config loads."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from unetlab.cli import app
from unetlab.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Pages written for the site (the other pages are checked by the strict build only).
SITE_PAGES = [DOCS / "index.md", *sorted((DOCS / "howto").glob("*.md"))]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_pages_are_current():
    for path, text in _generator().generate().items():
        assert path.is_file() and path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(ROOT)} is stale: run .venv/bin/python docs/gen_reference.py and commit the result")


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for page in ("index.html", "benchmarks/index.html", "reference/config/index.html", "reference/cli/index.html",
                 "howto/tgs/index.html", "architecture/index.html", "study-tgs/index.html"):
        assert (site / page).is_file(), page
    # BENCHMARKS.md (repository root) arrives through docs/hooks.py with its figure link rewritten.
    benchmarks = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "TGS Salt from scratch" in benchmarks and "precision-recall-best-val.png" in benchmarks
    assert not (ROOT / "docs" / "benchmarks.md").exists()


def _config_keys() -> set[str]:
    """Every key of the default config as written to config.yaml: section.key (mappings are one key)."""
    keys = set()
    for section, value in Config().to_dict().items():
        if isinstance(value, dict) and section in Config.model_fields and section not in ("name",):
            keys |= {f"{section}.{key}" for key in value}
        else:
            keys.add(section)
    return keys


def test_config_reference_anchors_every_key():
    page = (DOCS / "reference" / "config.md").read_text(encoding="utf-8")
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', page))
    model_fields = {f"model.{name}" for name in Config.model_fields["model"].annotation.model_fields}
    missing = []
    for key in sorted(_config_keys()):
        # model options of the default model (unet) are anchored as model.unet.<option>
        anchor = key if not key.startswith("model.") or key in model_fields else f"model.unet.{key[6:]}"
        if anchor not in anchors:
            missing.append(key)
    assert not missing, f"config keys missing from docs/reference/config.md: {missing}"
    assert {"data.format", "loss.terms[].stop", "data.options.isbi.foreground", "eval.min_component"} <= anchors


def _commands(command, path):
    """(path, command) for every leaf command of the click tree."""
    if not hasattr(command, "list_commands"):
        return [(path, command)]
    ctx = command.context_class(command, info_name=" ".join(path))
    return [leaf for name in command.list_commands(ctx) for leaf in _commands(command.get_command(ctx, name),
                                                                               path + [name])]


def test_cli_reference_lists_every_option_of_the_help():
    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## `([^`]+)`\n(.*?)(?=^## |\Z)", page, flags=re.M | re.S))
    runner = CliRunner()
    leaves = _commands(typer.main.get_command(app), [])
    assert {"train", "predict", "data download", "bench models"} <= {" ".join(p) for p, _ in leaves}
    for path, _ in leaves:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
        assert result.exit_code == 0, result.output
        # option names open a row of rich's option panel ("│ *  --out"); help text naming options does not
        options = set(re.findall(r"^│ [ *]{0,4}(--[a-z][a-z0-9-]*)", result.output, flags=re.M)) - {"--help"}
        assert options or path == ["configs"], result.output
        section = sections[" ".join(path)]
        missing = sorted(o for o in options if f"`{o}`" not in section)
        assert not missing, f"unetlab {' '.join(path)}: {missing} missing from docs/reference/cli.md"


def _documented_commands() -> list[tuple[Path, list[str]]]:
    """Every `.venv/bin/unetlab ...` line inside a code block of the site's own pages, as arguments."""
    found = []
    for page in SITE_PAGES:
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.M | re.S)
        for line in "\n".join(blocks).splitlines():
            if line.startswith(".venv/bin/unetlab "):
                found.append((page, shlex.split(line.split("  #")[0])[1:]))
    return found


def _parse(args: list[str]):
    """The leaf command and its parsed parameters; click refuses unknown options and bad choices."""
    command, path = typer.main.get_command(app), []
    while hasattr(command, "list_commands"):
        ctx = command.context_class(command, info_name=" ".join(path))
        command, path, args = command.get_command(ctx, args[0]), path + [args[0]], args[1:]
        assert command is not None, f"no command {' '.join(path)}"
    return path, command.make_context(" ".join(path), list(args), resilient_parsing=False).params


def test_parse_refuses_an_unknown_option():
    with pytest.raises(Exception):
        _parse(["train", "--data", "x", "--no-such-option"])


@pytest.mark.parametrize("page,args", _documented_commands(),
                         ids=lambda v: v.name if isinstance(v, Path) else " ".join(v)[:60])
def test_documented_command_parses_and_its_config_loads(page, args):
    path, params = _parse(args)
    if path == ["train"] and not params.get("resume"):
        load_config(params.get("config"), list(params.get("set_") or []))


def test_site_pages_have_command_lines():
    pages = {page.name for page, _ in _documented_commands()}
    assert {"index.md", "tgs.md", "pets.md", "camvid.md", "folders.md"} <= pages
