"""Content hashes: files, folder trees, JSON values and combinations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from eventrunner.state.hashing import (
    CHUNK,
    combine,
    hash_bytes,
    hash_file,
    hash_json,
    hash_path,
    hash_tree,
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "out"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.txt").write_text("beta")
    return root


def test_same_content_gives_same_hash_and_different_content_a_different_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "one").write_bytes(b"hello")
    (tmp_path / "two").write_bytes(b"hello")
    (tmp_path / "three").write_bytes(b"hellO")
    assert hash_file(tmp_path / "one") == hash_file(tmp_path / "two") == hash_bytes(b"hello")
    assert hash_file(tmp_path / "three") != hash_file(tmp_path / "one")
    assert len(hash_bytes(b"")) == 32


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_file_hash_streams_large_files_and_equals_the_hash_of_their_bytes(
    tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)
    (tmp_path / "big").write_bytes(data)
    assert hash_file(tmp_path / "big") == hash_bytes(data)
    assert hash_path(tmp_path / "big") == hash_bytes(data)


def test_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hash_path(tmp_path / "nope")


def test_tree_hash_is_stable_and_differs_from_a_file_hash(tree: Path) -> None:
    assert hash_path(tree) == hash_tree(tree) == hash_tree(tree)
    assert hash_tree(tree) != hash_file(tree / "a.txt")


def test_empty_folder_has_a_hash_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "e1").mkdir()
    (tmp_path / "e2").mkdir()
    assert hash_tree(tmp_path / "e1") == hash_tree(tmp_path / "e2")
    (tmp_path / "e2" / "empty").write_bytes(b"")
    assert hash_tree(tmp_path / "e1") != hash_tree(tmp_path / "e2")


def test_tree_hash_changes_when_a_file_is_renamed(tree: Path) -> None:
    before = hash_tree(tree)
    (tree / "sub" / "b.txt").rename(tree / "sub" / "c.txt")
    assert hash_tree(tree) != before


def test_tree_hash_changes_when_a_file_moves_to_another_folder(tree: Path) -> None:
    before = hash_tree(tree)
    (tree / "sub" / "b.txt").rename(tree / "b.txt")
    assert hash_tree(tree) != before


def test_tree_hash_changes_when_content_changes(tree: Path) -> None:
    before = hash_tree(tree)
    (tree / "sub" / "b.txt").write_text("betA")
    assert hash_tree(tree) != before


def test_tree_hash_changes_when_a_file_or_empty_folder_is_added(tree: Path) -> None:
    before = hash_tree(tree)
    (tree / "sub" / "empty").mkdir()
    with_folder = hash_tree(tree)
    (tree / "new.txt").write_text("")
    assert len({before, with_folder, hash_tree(tree)}) == 3


def test_tree_hash_ignores_modification_times(tree: Path) -> None:
    before = hash_tree(tree)
    os.utime(tree / "a.txt", ns=(1_000_000_000, 1_000_000_000))
    os.utime(tree / "sub", ns=(2_000_000_000, 2_000_000_000))
    assert hash_tree(tree) == before


def test_tree_hash_skips_our_temporary_files(tree: Path) -> None:
    before = hash_tree(tree)
    (tree / ".er-tmp-123").write_text("half written")
    (tree / "sub" / ".er-tmp-dir").mkdir()
    (tree / "sub" / ".er-tmp-dir" / "x").write_text("x")
    assert hash_tree(tree) == before
    (tree / ".other-hidden").write_text("counts")
    assert hash_tree(tree) != before


def test_tree_hash_records_symlink_targets_without_following_them(
    tree: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("one")
    (tree / "link").symlink_to(outside)
    before = hash_tree(tree)
    # When the target's content changes, the link itself has not: the tree hash stays.
    outside.write_text("two")
    assert hash_tree(tree) == before
    # When the link points elsewhere, it changes.
    (tree / "link").unlink()
    (tree / "link").symlink_to(tmp_path / "elsewhere.txt")
    assert hash_tree(tree) != before


def test_symlinked_folder_inside_a_tree_is_not_walked(tree: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (tree / "dirlink").symlink_to(target, target_is_directory=True)
    before = hash_tree(tree)
    (target / "new.txt").write_text("new")
    assert hash_tree(tree) == before


def test_tree_hash_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    names = ["b", "a", "c/d", "a.b", "a-b"]
    for root, order in ((tmp_path / "x", names), (tmp_path / "y", list(reversed(names)))):
        for name in order:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(name)
    assert hash_tree(tmp_path / "x") == hash_tree(tmp_path / "y")


def test_hash_json_does_not_depend_on_key_order() -> None:
    a = {"b": 1, "a": {"y": [1, 2], "x": "é"}}
    b = {"a": {"x": "é", "y": [1, 2]}, "b": 1}
    assert hash_json(a) == hash_json(b)
    assert hash_json(a) != hash_json({**a, "b": 2})
    assert hash_json([1, 2]) != hash_json([2, 1])


def test_combine_is_unambiguous_about_part_boundaries() -> None:
    assert combine("ab", "c") != combine("a", "bc")
    assert combine("a", "") != combine("a")
    assert combine("x", "y") == combine("x", "y")
    assert combine("x", "y") != combine("y", "x")
