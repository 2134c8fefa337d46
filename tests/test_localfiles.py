"""``skerry.localfiles.write_private``: a local file of the platform, written whole with its mode."""

import os
import stat

import pytest

from skerry.localfiles import write_private


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_the_file_has_the_mode_asked_for_whatever_the_umask(tmp_path, mode):
    path = tmp_path / "f.json"
    umask = os.umask(0o077)  # skerry up's: 0640 is still 0640
    try:
        write_private(path, '{"a": 1}', mode=mode)
    finally:
        os.umask(umask)
    assert mode_of(path) == mode
    assert path.read_bytes() == b'{"a": 1}'
    assert os.listdir(tmp_path) == ["f.json"]


def test_the_default_mode_is_0600_and_bytes_are_written_as_they_are(tmp_path):
    write_private(str(tmp_path / "k"), b"\x00\xff")
    assert mode_of(tmp_path / "k") == 0o600 and (tmp_path / "k").read_bytes() == b"\x00\xff"


def test_an_existing_file_is_replaced_whole_with_the_new_mode(tmp_path):
    path = tmp_path / "ports.json"
    path.write_text("x" * 1000)
    os.chmod(path, 0o644)
    before = os.stat(path).st_ino
    write_private(path, "short")
    assert path.read_text() == "short"  # nothing of the longer old content is left
    assert mode_of(path) == 0o600
    assert os.stat(path).st_ino != before  # a new file: whoever had the old one open keeps it whole


def test_a_link_at_the_path_is_replaced_not_written_through(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "f").symlink_to(target)
    write_private(tmp_path / "f", "new")
    assert target.read_text() == "keep"
    assert not (tmp_path / "f").is_symlink() and (tmp_path / "f").read_text() == "new"


def test_data_of_another_type_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(TypeError, match=r"f\.json is written from bytes or str, not dict"):
        write_private(tmp_path / "f.json", {"a": 1})
    assert os.listdir(tmp_path) == []


def test_a_missing_folder_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "missing" / "f"
    with pytest.raises(FileNotFoundError) as raised:
        write_private(path, "x")
    assert raised.value.filename == str(path)  # not the temporary file's name
    assert os.listdir(tmp_path) == []


def test_a_failed_replace_leaves_no_temporary_file_and_the_old_file_as_it_was(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "inside").write_text("x")
    with pytest.raises(OSError) as raised:
        write_private(folder, "data")  # a folder (not empty) is no file to replace
    assert raised.value.filename == str(folder)
    assert sorted(os.listdir(tmp_path)) == ["f"] and os.listdir(folder) == ["inside"]


def test_a_failure_while_writing_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_text("old")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left") as raised:
        write_private(path, "new")
    assert raised.value.filename == str(path)
    assert os.listdir(tmp_path) == ["f"] and path.read_text() == "old"
