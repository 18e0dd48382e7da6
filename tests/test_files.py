"""`conformance.core.files`: a write that fails part way leaves the old file (or none) and no temporary
file; a bad target is refused by name before any work. The planted bug (a plain `open(path, "w")`)
shows the check can fail."""
import os
import stat

import pytest

from conformance.core import files


def half_then_fail(tmp):
    """A writer that gets half a file out, then fails (a full disk, an exception while rendering)."""
    tmp.write_text("half of the n")
    raise OSError(28, "No space left on device")


def plain_write(path, data, what="file"):
    """The planted bug: write in place, as `Path.write_text` does."""
    with open(path, "w") as f:
        data(f)


def left_behind(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_failing_write_keeps_the_old_file_whole(tmp_path):
    target = tmp_path / "report.md"
    files.write(target, "the old report\n")
    with pytest.raises(files.WriteError) as err:
        files.write(target, half_then_fail, "report file")
    assert str(err.value) == f"report file {target} cannot be written: No space left on device"
    assert target.read_text() == "the old report\n" and left_behind(tmp_path) == ["report.md"]


def test_the_planted_bug_leaves_half_a_file(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("the old report\n")

    def half_then_fail_open(f):
        f.write("half of the n")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        plain_write(target, half_then_fail_open)
    assert target.read_text() == "half of the n"  # what files.write exists to prevent


def test_write_all_writes_every_file_or_none(tmp_path):
    a, b = tmp_path / "x.md", tmp_path / "x.json"
    with pytest.raises(files.WriteError, match=r"report file .*x\.json cannot be written"):
        files.write_all({a: "markdown\n", b: half_then_fail}, "report file")
    assert left_behind(tmp_path) == []  # x.md was ready, but is not renamed without x.json
    files.write_all({a: "markdown\n", b: b'{"ok": 1}'}, "report file")
    assert a.read_text() == "markdown\n" and b.read_bytes() == b'{"ok": 1}' and left_behind(tmp_path) == ["x.json", "x.md"]


def test_any_exception_in_a_writer_removes_the_temporary_file(tmp_path):
    def broken(tmp):
        tmp.write_text("{")
        raise TypeError("Object of type object is not JSON serializable")
    with pytest.raises(TypeError):
        files.write(tmp_path / "r.json", broken)
    assert left_behind(tmp_path) == []


def test_a_written_file_gets_the_mode_a_plain_open_gives(tmp_path):
    files.write(tmp_path / "w.md", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "w.md").stat().st_mode) == 0o666 & ~umask


def test_missing_folders_are_made_unless_refused(tmp_path):
    assert files.write(tmp_path / "a" / "b" / "c.md", "x").read_text() == "x"
    with pytest.raises(files.WriteError) as err:
        files.write(tmp_path / "no" / "w.safetensors", "x", "weights file", parents=False)
    assert str(err.value) == (f"weights file {tmp_path / 'no' / 'w.safetensors'} cannot be written: its folder "
                              f"{tmp_path / 'no'} does not exist")


def test_bad_targets_are_refused_by_name_before_any_work(tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    cases = [
        (lambda: files.directory(tmp_path / "a-file", "--out"), f"--out {tmp_path / 'a-file'} must be a folder; received a file"),
        (lambda: files.file(tmp_path / "a-folder", "--out"), f"--out {tmp_path / 'a-folder'} must be a file; received a folder"),
        (lambda: files.file(tmp_path / "a-file" / "x" / "r.md", "--out"),
         f"--out {tmp_path / 'a-file' / 'x' / 'r.md'} lies under {tmp_path / 'a-file'}, which is a file, not a folder"),
        (lambda: files.directory(tmp_path / "a-file" / "reports", "report directory"),
         f"report directory {tmp_path / 'a-file' / 'reports'} lies under {tmp_path / 'a-file'}, which is a file, "
         f"not a folder"),
    ]
    for call, message in cases:
        with pytest.raises(files.WriteError) as err:
            call()
        assert str(err.value) == message
    assert left_behind(tmp_path) == ["a-file", "a-folder"]
    assert isinstance(files.WriteError("x"), ValueError)  # the CLI's one error path: exit 2, one line
