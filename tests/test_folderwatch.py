"""FolderWatch: which local folders changed, from the real kernel's inotify; every change
is made by another process, as a user's kernel or job would make it."""

import os
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


# each change, and the entries it names (None: the folder itself changed, read it whole)
CHANGES = {
    "a file written": ("open(d + '/a.txt', 'a').write('more')", {"a.txt"}),
    "a file made": ("open(d + '/new.txt', 'w').close()", {"new.txt"}),
    "a file removed": ("os.remove(d + '/a.txt')", {"a.txt"}),
    "a file renamed": ("os.rename(d + '/a.txt', d + '/b.txt')", {"a.txt", "b.txt"}),
    "a file moved out": ("os.rename(d + '/a.txt', d + '/../outside.txt')", {"a.txt"}),
    "a file moved in": ("open(d + '/../in.txt', 'w').close(); os.rename(d + '/../in.txt', d + '/in.txt')",
                        {"in.txt"}),
    "a file's times set": ("os.utime(d + '/a.txt', (1, 1))", {"a.txt"}),
    "a file's mode changed": ("os.chmod(d + '/a.txt', 0o600)", {"a.txt"}),
    "a file with an odd name made": ("open(os.fsencode(d) + b'/caf\\xe9 \\xff.txt', 'w').close()",
                                     {os.fsdecode(b"caf\xe9 \xff.txt")}),
    "a subfolder made": ("os.mkdir(d + '/sub2')", {"sub2"}),
    "a subfolder removed": ("os.rmdir(d + '/sub')", {"sub"}),
    "a subfolder's times set": ("os.utime(d + '/sub', (1, 1))", {"sub"}),
    "the folder's own times set": ("os.utime(d, (1, 1))", None),
    "the folder itself removed": ("import shutil; shutil.rmtree(d)", None),
    "the folder itself moved": ("os.rename(d, d + '-moved')", None),
    "its parent moved": ("os.rename(os.path.dirname(d), os.path.dirname(d) + '-moved')", None),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_by_another_process_is_named(folder, change):
    code, named = CHANGES[change]
    watch = FolderWatch()
    token = watch.watch(str(folder))
    assert token
    assert watch.changes(str(folder), token) == set()
    elsewhere(code, folder)
    assert watch.changes(str(folder), token) == named


def test_each_change_is_named_once(folder):
    watch = FolderWatch()
    token = watch.watch(str(folder))
    elsewhere("open(d + '/new.txt', 'w').close()", folder)
    assert watch.changes(str(folder), token) == {"new.txt"}
    assert watch.changes(str(folder), token) == set()  # asked again: nothing since
    elsewhere("os.remove(d + '/new.txt'); open(d + '/a.txt', 'a').write('b')", folder)
    assert watch.changes(str(folder), token) == {"new.txt", "a.txt"}


def test_more_changes_than_max_names_mean_the_folder_is_read_whole(folder, monkeypatch):
    monkeypatch.setattr(folderwatch, "MAX_NAMES", 3)
    watch = FolderWatch()
    token = watch.watch(str(folder))
    elsewhere("[open(f'{d}/{i}', 'w').close() for i in range(4)]", folder)
    assert watch.changes(str(folder), token) is None
    assert watch.changes(str(folder), token) is None  # until watched again
    token = watch.watch(str(folder))
    assert watch.changes(str(folder), token) == set()


def test_only_the_latest_watch_of_a_path_is_answered(folder):
    watch = FolderWatch()
    old = watch.watch(str(folder))
    new = watch.watch(str(folder))
    assert watch.changes(str(folder), old) is None
    assert watch.changes(str(folder), new) == set()


def test_folders_are_told_apart(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    watch = FolderWatch()
    tokens = watch.watch(str(one)), watch.watch(str(two))
    assert all(tokens)
    elsewhere("open(d + '/x', 'w').close()", two)
    assert watch.changes(str(one), tokens[0]) == set()
    assert watch.changes(str(two), tokens[1]) == {"x"}


def test_a_folder_watched_by_two_paths_is_changed_under_both(folder, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(folder)  # a link in the home to a folder: two federation paths, one folder
    watch = FolderWatch()
    first, by_link = watch.watch(str(folder)), watch.watch(str(link))
    watch.forget(str(folder))  # the other path keeps the one watch
    elsewhere("open(d + '/x', 'w').close()", folder)
    assert watch.changes(str(link), by_link) == {"x"}
    assert watch.changes(str(folder), first) is None
    first, by_link = watch.watch(str(folder)), watch.watch(str(link))
    elsewhere("os.remove(d + '/x')", folder)
    assert watch.changes(str(folder), first) == {"x"}
    assert watch.changes(str(link), by_link) == {"x"}  # each path hears of it, whoever asked first


def test_a_path_that_now_leads_to_another_folder_is_watched_there(tmp_path):
    one, two, link = tmp_path / "one", tmp_path / "two", tmp_path / "link"
    one.mkdir()
    two.mkdir()
    link.symlink_to(one)
    watch = FolderWatch()
    token = watch.watch(str(link))
    link.unlink()
    link.symlink_to(two)
    assert watch.changes(str(link), token) is None  # the path leads elsewhere: read it whole
    token = watch.watch(str(link))
    elsewhere("open(d + '/x', 'w').close()", two)
    elsewhere("open(d + '/y', 'w').close()", one)
    assert watch.changes(str(link), token) == {"x"}


def test_what_happens_inside_a_subfolder_is_not_the_folders_change(folder):
    # the documented limit: the caller looks at subfolders' own times itself
    watch = FolderWatch()
    token = watch.watch(str(folder))
    elsewhere("open(d + '/sub/deep.txt', 'w').close()", folder)
    assert watch.changes(str(folder), token) == set()


def test_an_unwatched_or_forgotten_folder_has_no_changes_to_tell(folder):
    watch = FolderWatch()
    assert watch.changes(str(folder), 1) is None
    token = watch.watch(str(folder))
    watch.forget(str(folder))
    assert watch.changes(str(folder), token) is None


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
