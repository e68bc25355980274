"""The registry: built-ins and an installed third-party plugin register through the same hooks."""

import sys
import textwrap

import pytest
from typer.testing import CliRunner

from pgenrm_plugins import cli, plugins

PLUGIN = '''
import typer
from pgenrm_plugins import hookimpl

@hookimpl
def register_dataset_loaders(register):
    register(".tsv", lambda path: iter(()), description="tab-separated rows")

@hookimpl
def register_backends(register):
    register("transformers", lambda options: "overridden", description="a plugin may override a built-in")

@hookimpl
def register_commands(cli):
    @cli.command()
    def hello():
        """Say hello from a plugin."""
        typer.echo("hello from pgenrm-tsv")
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A real distribution on sys.path with an entry point in the pgenrm_plugins group."""
    (tmp_path / "pgenrm_tsv.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "pgenrm_tsv-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pgenrm-tsv\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pgenrm_plugins]\ntsv = pgenrm_tsv\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.get_plugin_manager.cache_clear()
    yield
    sys.modules.pop("pgenrm_tsv", None)
    plugins.get_plugin_manager.cache_clear()


def test_builtins_register_through_the_hooks():
    backends = plugins.registry("backend")
    assert {"transformers", "openai", "vllm"} <= set(backends)
    assert all(e.distribution == "pgenrm-plugins" for e in backends.values())
    assert backends["transformers"].options is not None
    assert {".jsonl", ".parquet"} <= set(plugins.registry("dataset_loader"))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(plugins.UnknownPluginError) as exc:
        plugins.get("backend", "gpt-judge")
    assert "unknown backend 'gpt-judge'" in str(exc.value)
    assert "openai, transformers, vllm" in str(exc.value)
    with pytest.raises(plugins.UnknownPluginError, match="known kinds"):
        plugins.registry("widget")


def test_entry_point_plugin_is_listed_with_its_distribution(installed_plugin):
    loader = plugins.get("dataset_loader", ".tsv")
    assert loader.distribution == "pgenrm-tsv"
    # registered after the built-ins, so its name wins
    assert plugins.get("backend", "transformers").distribution == "pgenrm-tsv"
    result = CliRunner().invoke(cli.app, ["plugins", "--kind", "dataset_loader"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "pgenrm-tsv" in result.output and ".tsv" in result.output


def test_plugin_adds_a_cli_command(installed_plugin):
    app = cli.typer.Typer()
    app.command()(lambda: None)  # typer needs one command to build a group
    plugins.register_commands(app)
    result = CliRunner().invoke(app, ["hello"])
    assert result.exit_code == 0 and "hello from pgenrm-tsv" in result.output


def test_plugins_command_lists_every_kind():
    result = CliRunner().invoke(cli.app, ["plugins"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for word in ("backend", "dataset_loader", "transformers", "openai", "vllm", "pgenrm-plugins"):
        assert word in result.output
