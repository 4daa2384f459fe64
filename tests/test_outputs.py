"""The one output rule: check before work, never replace without --overwrite, all-or-nothing writes."""

from __future__ import annotations

import os
import stat

import pytest

from craft_ray.outputs import OutputExistsError, atomic_dir, atomic_file, check_output


def test_existing_outputs_are_refused_unless_overwrite(tmp_path):
    existing = tmp_path / "scores.parquet"
    existing.write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output(existing)
    assert check_output(existing, overwrite=True) == existing
    with pytest.raises(OutputExistsError, match="is a directory"):
        check_output(tmp_path)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="not empty"):
        check_output(tmp_path / "report", kind="dir")
    with pytest.raises(OutputExistsError, match="not a directory"):
        check_output(existing, kind="dir")
    assert check_output(tmp_path / "new", kind="dir") == tmp_path / "new"


def test_a_failed_write_leaves_the_old_output_and_no_temporary(tmp_path):
    target = tmp_path / "cal.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.json"]
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "eval"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
