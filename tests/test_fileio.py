"""Outputs appear whole or not at all, and never destroy or escape what is already there."""

import pytest

from cnnzip.fileio import MARKER, OutputError, atomic_dir, atomic_path


def test_a_folder_output_replaces_only_nothing_an_empty_folder_or_its_own(tmp_path):
    out = tmp_path / "project"
    for _ in range(2):  # a new folder, then its own output again
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("a")
        assert (out / "a.txt").read_text() == "a" and (out / MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty) as tmp:
        (tmp / "b.txt").write_text("b")
    assert (empty / "b.txt").is_file()


def test_a_folder_output_refuses_a_users_folder_a_link_or_a_file(tmp_path):
    """`export --format hls4ml --out DIR` once deleted everything in DIR."""
    used = tmp_path / "runs"
    used.mkdir()
    (used / "model.cnz").write_bytes(b"mine")
    (used / "my-notes.txt").write_text("notes")
    with pytest.raises(OutputError, match="other content"):
        with atomic_dir(used):
            pass
    assert sorted(p.name for p in used.iterdir()) == ["model.cnz", "my-notes.txt"]
    link = tmp_path / "link"
    link.symlink_to(used)
    with pytest.raises(OutputError, match="symbolic link"):
        with atomic_dir(link):
            pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        with atomic_dir(tmp_path / "file"):
            pass
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_output_leaves_the_previous_one_and_no_temporaries(tmp_path):
    out = tmp_path / "project"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("the build failed")
    assert (out / "a.txt").read_text() == "old"
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "f.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]
