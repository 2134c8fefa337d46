"""FolderWatch: which local folders changed, from the real kernel's inotify; every change
is made by another process, as a user's kernel or job would make it."""

import subprocess
import sys

import pytest

from skerry.adaptors import folderwatch
from skerry.adaptors.folderwatch import FolderWatch, file_system_type


def elsewhere(code: str, folder) -> None:
    """Run ``code`` (Python, with ``os`` and the folder as ``d``) in another process."""
    subprocess.run([sys.executable, "-c", f"import os; d = {str(folder)!r}; {code}"], check=True)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "watched"
    d.mkdir()
    (d / "a.txt").write_text("a")
    (d / "sub").mkdir()
    return d


CHANGES = {
    "a file written": "open(d + '/a.txt', 'a').write('more')",
    "a file made": "open(d + '/new.txt', 'w').close()",
    "a file removed": "os.remove(d + '/a.txt')",
    "a file renamed": "os.rename(d + '/a.txt', d + '/b.txt')",
    "a file moved out": "os.rename(d + '/a.txt', d + '/../outside.txt')",
    "a file moved in": "open(d + '/../in.txt', 'w').close(); os.rename(d + '/../in.txt', d + '/in.txt')",
    "a file's times set": "os.utime(d + '/a.txt', (1, 1))",
    "a file's mode changed": "os.chmod(d + '/a.txt', 0o600)",
    "a subfolder made": "os.mkdir(d + '/sub2')",
    "a subfolder removed": "os.rmdir(d + '/sub')",
    "a subfolder's times set": "os.utime(d + '/sub', (1, 1))",
    "the folder itself removed": "import shutil; shutil.rmtree(d)",
    "the folder itself moved": "os.rename(d, d + '-moved')",
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_by_another_process_is_reported(folder, change):
    watch = FolderWatch()
    assert watch.watch(str(folder))
    assert watch.unchanged(str(folder))
    elsewhere(CHANGES[change], folder)
    assert not watch.unchanged(str(folder))


def test_a_changed_folder_stays_changed_until_it_is_watched_again(folder):
    watch = FolderWatch()
    watch.watch(str(folder))
    elsewhere("open(d + '/new.txt', 'w').close()", folder)
    assert not watch.unchanged(str(folder))
    assert not watch.unchanged(str(folder))  # asked again: still changed
    assert watch.watch(str(folder))
    assert watch.unchanged(str(folder))
    elsewhere("os.remove(d + '/new.txt')", folder)
    assert not watch.unchanged(str(folder))


def test_folders_are_told_apart(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    watch = FolderWatch()
    assert watch.watch(str(one)) and watch.watch(str(two))
    elsewhere("open(d + '/x', 'w').close()", two)
    assert watch.unchanged(str(one))
    assert not watch.unchanged(str(two))


def test_a_folder_watched_by_two_paths_is_changed_under_both(folder, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(folder)  # a link in the home to a folder: two federation paths, one folder
    watch = FolderWatch()
    assert watch.watch(str(folder)) and watch.watch(str(link))
    watch.forget(str(folder))  # the other path keeps the one watch
    elsewhere("open(d + '/x', 'w').close()", folder)
    assert not watch.unchanged(str(link))
    assert watch.watch(str(folder)) and watch.watch(str(link))
    elsewhere("os.remove(d + '/x')", folder)
    assert not watch.unchanged(str(folder)) and not watch.unchanged(str(link))


def test_a_path_that_now_leads_to_another_folder_is_watched_there(tmp_path):
    one, two, link = tmp_path / "one", tmp_path / "two", tmp_path / "link"
    one.mkdir()
    two.mkdir()
    link.symlink_to(one)
    watch = FolderWatch()
    assert watch.watch(str(link))
    link.unlink()
    link.symlink_to(two)
    assert watch.watch(str(link))
    elsewhere("open(d + '/x', 'w').close()", two)
    assert not watch.unchanged(str(link))


def test_what_happens_inside_a_subfolder_is_not_the_folders_change(folder):
    # the documented limit: the caller looks at subfolders' own times itself
    watch = FolderWatch()
    watch.watch(str(folder))
    elsewhere("open(d + '/sub/deep.txt', 'w').close()", folder)
    assert watch.unchanged(str(folder))


def test_an_unwatched_or_forgotten_folder_is_never_unchanged(folder):
    watch = FolderWatch()
    assert not watch.unchanged(str(folder))
    watch.watch(str(folder))
    watch.forget(str(folder))
    assert not watch.unchanged(str(folder))


def test_no_more_than_max_folders_are_watched(tmp_path):
    folders = [tmp_path / f"f{i}" for i in range(3)]
    for f in folders:
        f.mkdir()
    watch = FolderWatch(max_folders=2)
    assert watch.watch(str(folders[0])) and watch.watch(str(folders[1]))
    assert not watch.watch(str(folders[2]))
    assert watch.watch(str(folders[0]))  # one already watched is watched anew
    watch.forget(str(folders[1]))
    assert watch.watch(str(folders[2]))


def test_a_missing_path_or_a_file_cannot_be_watched(folder):
    watch = FolderWatch()
    assert not watch.watch(str(folder / "nothing-here"))
    assert not watch.watch(str(folder / "a.txt"))


def test_a_file_system_shared_with_other_machines_is_not_watched(folder, monkeypatch):
    # writes from another NFS client raise no event here: such a folder must not be trusted
    monkeypatch.setattr(folderwatch, "file_system_type", lambda path: "nfs4")
    assert not FolderWatch().watch(str(folder))


def test_the_file_system_type_is_the_innermost_mounts(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "30 22 0:40 / /home rw,relatime shared:2 - nfs4 server:/home rw,vers=4.2\n"
        "31 30 0:41 / /home/scratch\\040space rw shared:3 - tmpfs tmpfs rw\n"
        "32 22 0:42 / /homework rw shared:4 - fuse.sshfs host: rw\n")
    def kind(path):
        return file_system_type(path, str(mountinfo))

    assert kind("/home/alice") == "nfs4"
    assert kind("/home/scratch space/x") == "tmpfs"
    assert kind("/homework/x") == "fuse.sshfs"  # not /home's: a mount point is a whole segment
    assert kind("/var/lib") == "ext4"
    assert file_system_type(str(tmp_path)) in folderwatch.LOCAL_TYPES  # this machine's /tmp
