import pytest

from autoresearch.config import load_settings
from autoresearch.constants import read_constants
from autoresearch.gitrepo import GitRepo
from autoresearch.workspace import Workspace, WorkspaceError, init_workspace


def test_init_creates_a_committed_workspace_with_the_profile_constants(tmp_path):
    root = init_workspace(tmp_path / "ws", profile="cpu", budget=12, tag="t1", prepare_data=False)
    names = sorted(p.name for p in root.iterdir())
    assert names == [".git", ".gitignore", "autoresearch.toml", "program.md", "train.py"]
    settings = load_settings(root)
    assert (settings.experiment.profile, settings.experiment.time_budget, settings.experiment.tag) == ("cpu", 12.0, "t1")
    constants = read_constants((root / "train.py").read_text())
    assert constants["DEPTH"] == 4 and constants["DEVICE_BATCH_SIZE"] == 16
    repo = GitRepo(root)
    assert repo.changed_paths() == []
    assert "results.tsv" in (root / ".gitignore").read_text() and ".autoresearch/" in (root / ".gitignore").read_text()


def test_gpu_profile_keeps_the_template_values(tmp_path):
    root = init_workspace(tmp_path / "ws", profile="gpu", prepare_data=False)
    constants = read_constants((root / "train.py").read_text())
    assert constants["DEPTH"] == 8 and constants["TOTAL_BATCH_SIZE"] == 2**19


@pytest.mark.parametrize("kwargs, message", [
    ({"profile": "tpu"}, "unknown profile"),
    ({"budget": -1}, "positive"),
    ({"tag": "a b"}, "--tag"),
    ({"data": "/no/such/place"}, "no such file"),
])
def test_bad_input_is_refused_clearly(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        init_workspace(tmp_path / "ws", prepare_data=False, **{"profile": "cpu", **kwargs})
    assert not (tmp_path / "ws").exists()


def test_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "notes.txt").write_text("mine")
    with pytest.raises(WorkspaceError, match="not empty"):
        init_workspace(tmp_path / "ws", profile="cpu", prepare_data=False)


def test_scope_allows_only_editable_files(tmp_path):
    ws = Workspace.open(init_workspace(tmp_path / "ws", profile="cpu", prepare_data=False))
    assert ws.out_of_scope(["train.py"]) == []
    assert ws.out_of_scope(["train.py", "program.md", "autoresearch.toml"]) == ["autoresearch.toml", "program.md"]
