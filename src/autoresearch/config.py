"""The frozen settings of a research workspace (autoresearch.toml) as dataclasses."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from autoresearch.harness.profiles import Profile, get_profile

CONFIG_NAME = "autoresearch.toml"


@dataclass
class ExperimentSettings:
    profile: str = "cpu"  # a concrete profile name (never "auto" once written)
    data: str = "builtin"  # builtin | climbmix | a path to the user's files
    time_budget: float = 60.0  # seconds of training per experiment
    tag: str = "run"  # branch autoresearch/<tag>
    target: str = "train.py"  # the script each experiment runs
    editable: list = field(default_factory=lambda: ["train.py"])
    warm_start: str = "auto"  # auto | on | off: fork runs from a pre-warmed launcher (auto: Linux, no GPU)


@dataclass
class PolicySettings:
    name: str = "confirm"  # confirm | greedy
    k_sigma: float = 2.0  # a gain under k x noise sigma is re-run before keeping
    baseline_repeats: int = 3  # baseline runs on different seeds to estimate noise
    min_trust: str = "sealed"  # sealed | in-process | self-reported


@dataclass
class AgentSettings:
    name: str = "sweep"


@dataclass
class Settings:
    experiment: ExperimentSettings = field(default_factory=ExperimentSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    agent: AgentSettings = field(default_factory=AgentSettings)

    def profile(self) -> Profile:
        return get_profile(self.experiment.profile).with_budget(self.experiment.time_budget)


WARM_START_MODES = ("auto", "on", "off")


class ConfigError(ValueError):
    pass


def load_settings(workspace: Path) -> Settings:
    """The settings in WORKSPACE/autoresearch.toml as the file stands (see Workspace.open for the frozen copy)."""
    path = Path(workspace) / CONFIG_NAME
    if not path.exists():
        raise ConfigError(
            f"{path} not found: run `autoresearch init DIR` to create a workspace, "
            "or pass --workspace DIR"
        )
    return settings_from_toml(path.read_text(encoding="utf-8"), source=str(path))


def settings_from_toml(text: str, source: str = CONFIG_NAME) -> Settings:
    """Parses settings from TOML text; `source` names where it came from in error messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e}); fix the file or restore it with "
                          f"`git checkout HEAD -- {CONFIG_NAME}`") from None
    sections = {"experiment": ExperimentSettings, "policy": PolicySettings, "agent": AgentSettings}
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; known: {sorted(sections)}")
    values = {}
    for name, cls in sections.items():
        table = raw.get(name, {})
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(table) - known
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {sorted(bad)} in [{name}]; known: {sorted(known)}")
        values[name] = cls(**table)
    warm = values["experiment"].warm_start
    if warm not in WARM_START_MODES:
        raise ConfigError(f"{source}: warm_start = {warm!r} in [experiment]; use one of {', '.join(WARM_START_MODES)}")
    return Settings(**values)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_settings(settings: Settings) -> str:
    lines = ["# Frozen settings of this research workspace. Changing them makes results incomparable."]
    for section in dataclasses.fields(settings):
        lines.append(f"\n[{section.name}]")
        for key, value in dataclasses.asdict(getattr(settings, section.name)).items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def save_settings(workspace: Path, settings: Settings) -> Path:
    path = Path(workspace) / CONFIG_NAME
    path.write_text(dump_settings(settings))
    return path
