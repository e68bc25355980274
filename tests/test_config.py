import pytest

from pgenrm_plugins.config import ConfigError, PGenRMConfig, load_config


def test_no_config_is_the_embedded_default(monkeypatch):
    monkeypatch.delenv("PGENRM_CONFIG", raising=False)
    cfg = load_config()
    assert cfg == PGenRMConfig()
    assert cfg.backend.name == "transformers" and cfg.backend.options == {}
    assert cfg.reward.mode == "group"


def test_yaml_and_toml_give_the_same_config(tmp_path):
    (tmp_path / "c.yaml").write_text("reward:\n  mode: pointwise\nsampling:\n  chains: 3\n")
    (tmp_path / "c.toml").write_text('[reward]\nmode = "pointwise"\n[sampling]\nchains = 3\n')
    a, b = load_config(tmp_path / "c.yaml"), load_config(tmp_path / "c.toml")
    assert a == b and a.reward.mode == "pointwise" and a.sampling.chains == 3


def test_env_variable_names_the_file(tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text("sampling: {chains: 5}\n")
    monkeypatch.setenv("PGENRM_CONFIG", str(tmp_path / "c.yaml"))
    assert load_config().sampling.chains == 5


@pytest.mark.parametrize(
    "data, key",
    [
        ({"reward": {"mdoe": "group"}}, "reward.mdoe"),
        ({"reward": {"mode": "listwise"}}, "reward.mode"),
        ({"sampling": {"chains": 0}}, "sampling.chains"),
        ({"sampling": {"temperature": "hot"}}, "sampling.temperature"),
        ({"backnd": {}}, "backnd"),
        ({"backend": {"options": {"devcie": "cpu"}}}, "backend.options.devcie"),
        ({"backend": {"name": "openai", "options": {}}}, "backend.options.base_urls"),
    ],
)
def test_bad_keys_and_values_are_named(data, key):
    with pytest.raises(ConfigError) as exc:
        load_config(data)
    assert key in str(exc.value)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigError) as exc:
        load_config({"backend": {"name": "nope"}})
    msg = str(exc.value)
    assert "backend.name" in msg and "'nope'" in msg
    for known in ("transformers", "openai", "vllm"):
        assert known in msg


def test_file_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("reward: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_example_configs_are_valid():
    from pathlib import Path

    examples = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.yaml"))
    assert examples
    for path in examples:
        load_config(path)
