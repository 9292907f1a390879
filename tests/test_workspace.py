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


# --- frozen settings: read from the committed copy, a changed worktree copy is put back ----------
import hashlib
import subprocess

from autoresearch.config import CONFIG_NAME, Settings, save_settings


def _edited_settings(root):
    """Raises the budget in the worktree copy only, as a run could."""
    settings = load_settings(root)
    settings.experiment.time_budget = 999.0
    save_settings(root, settings)


def test_open_reads_the_committed_settings_and_restores_an_edited_file(tmp_path):
    root = init_workspace(tmp_path / "ws", profile="cpu", budget=12, prepare_data=False)
    committed = (root / CONFIG_NAME).read_bytes()
    _edited_settings(root)
    ws = Workspace.open(root)
    assert ws.settings.experiment.time_budget == 12.0 and ws.settings_source == f"HEAD:{CONFIG_NAME}"
    assert ws.settings_sha256 == hashlib.sha256(committed).hexdigest()
    assert (root / CONFIG_NAME).read_bytes() == committed
    assert any("differed from the committed copy" in note for note in ws.notes)
    assert Workspace.open(root).notes == []  # nothing left to repair


def test_skip_worktree_cannot_hide_a_settings_edit(tmp_path):
    root = init_workspace(tmp_path / "ws", profile="cpu", budget=12, prepare_data=False)
    _edited_settings(root)
    subprocess.run(["git", "update-index", "--skip-worktree", CONFIG_NAME], cwd=root, check=True)
    assert GitRepo(root).changed_paths() == []  # git alone would not notice
    ws = Workspace.open(root)
    assert ws.settings.experiment.time_budget == 12.0
    assert any("hidden from git" in note for note in ws.notes)
    assert GitRepo(root).hidden_paths() == [] and load_settings(root).experiment.time_budget == 12.0


def test_a_staged_settings_change_is_unstaged(tmp_path):
    root = init_workspace(tmp_path / "ws", profile="cpu", budget=12, prepare_data=False)
    committed = (root / CONFIG_NAME).read_bytes()
    _edited_settings(root)
    subprocess.run(["git", "add", CONFIG_NAME], cwd=root, check=True)
    (root / CONFIG_NAME).write_bytes(committed)  # the worktree looks clean, the next commit would not be
    ws = Workspace.open(root)
    assert any("staged" in note for note in ws.notes)
    assert ws.repo.git("diff", "--cached", "--name-only") == ""


def test_a_link_in_place_of_the_settings_is_replaced(tmp_path):
    root = init_workspace(tmp_path / "ws", profile="cpu", budget=12, prepare_data=False)
    committed = (root / CONFIG_NAME).read_bytes()
    elsewhere = tmp_path / "evil.toml"
    elsewhere.write_bytes(committed)
    (root / CONFIG_NAME).unlink()
    (root / CONFIG_NAME).symlink_to(elsewhere)
    ws = Workspace.open(root)
    assert not (root / CONFIG_NAME).is_symlink() and (root / CONFIG_NAME).read_bytes() == committed
    assert ws.notes and elsewhere.read_bytes() == committed


def test_uncommitted_settings_fall_back_to_the_file_and_say_so(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    GitRepo.init(root)
    save_settings(root, Settings())
    ws = Workspace.open(root)
    assert ws.settings_source == str(root / CONFIG_NAME)
    assert ws.settings_sha256 == hashlib.sha256((root / CONFIG_NAME).read_bytes()).hexdigest()
    assert any("not committed" in note for note in ws.notes)
