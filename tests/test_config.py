import pytest

from autoresearch.config import ConfigError, ExperimentSettings, Settings, load_settings, save_settings


def test_round_trip_keeps_every_value(tmp_path):
    settings = Settings(experiment=ExperimentSettings(profile="cpu", data='C:\\data "x"', time_budget=12.5,
                                                      tag="t1", editable=["train.py", "model.py"]))
    settings.policy.k_sigma = 3.0
    save_settings(tmp_path, settings)
    assert load_settings(tmp_path) == settings


def test_profile_applies_the_budget(tmp_path):
    settings = Settings(experiment=ExperimentSettings(profile="cpu", time_budget=7.0))
    profile = settings.profile()
    assert profile.name == "cpu" and profile.time_budget == 7.0 and profile.max_seq_len == 256


def test_missing_file_says_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError, match="autoresearch init"):
        load_settings(tmp_path)


def test_unknown_keys_are_refused(tmp_path):
    (tmp_path / "autoresearch.toml").write_text("[experiment]\nbudgte = 3\n")
    with pytest.raises(ConfigError, match="budgte"):
        load_settings(tmp_path)
    (tmp_path / "autoresearch.toml").write_text("[nonsense]\n")
    with pytest.raises(ConfigError, match="nonsense"):
        load_settings(tmp_path)


def test_settings_parse_from_text_with_the_source_in_errors():
    from autoresearch.config import dump_settings, settings_from_toml

    settings = Settings(experiment=ExperimentSettings(profile="cpu", time_budget=3.0))
    assert settings_from_toml(dump_settings(settings)) == settings
    with pytest.raises(ConfigError, match=r"HEAD:autoresearch.toml: not valid TOML.*git checkout HEAD"):
        settings_from_toml("[experiment\n", source="HEAD:autoresearch.toml")
    with pytest.raises(ConfigError, match="from-env: unknown key"):
        settings_from_toml("[policy]\nk_sigmaa = 1\n", source="from-env")
