"""The inode table: stable numbers, lookup counts, collisions and kind changes."""

from __future__ import annotations

import errno
import random
import sys

import pytest

from alluxiofuse.errors import StaleFile
from alluxiofuse.fs import inodes
from alluxiofuse.fs.inodes import ROOT_INODE, InodeTable, inode_number
from alluxiofuse.listing import Listing
from alluxiofuse.model import FileStatus, Kind

ROOT = FileStatus("", Kind.DIRECTORY)


def file(name: str, size: int = 1, mtime_ns: int = 1) -> FileStatus:
    return FileStatus(name, Kind.FILE, size=size, mtime_ns=mtime_ns)


def directory(name: str) -> FileStatus:
    return FileStatus(name, Kind.DIRECTORY)


@pytest.fixture
def table() -> InodeTable:
    return InodeTable(ROOT)


def test_root_is_inode_1(table: InodeTable) -> None:
    root = table.get(ROOT_INODE)
    assert ROOT_INODE == 1
    assert root.ino == 1
    assert root.path == ""
    assert root.status is ROOT
    assert table.by_path("") is root
    assert len(table) == 1


def test_inode_number_is_stable_and_never_reserved() -> None:
    paths = [f"dir{i % 7}/file{i}" for i in range(2000)] + ["", "a", "é/ü", "x\udcff"]
    numbers = [inode_number(p) for p in paths]
    assert numbers == [inode_number(p) for p in paths]
    assert all(1 < n < 2**63 for n in numbers)
    assert len(set(numbers)) == len(paths)
    assert inode_number("a", 1) != inode_number("a", 0)
    assert inode_number("a", 0) == inode_number("a")


def test_learn_gives_hashed_number_and_does_not_count(table: InodeTable) -> None:
    inode = table.learn("d/f", file("f"))
    assert inode.ino == inode_number("d/f")
    assert inode.lookups == 0
    assert table.get(inode.ino) is inode
    assert table.by_path("d/f") is inode
    assert len(table) == 2


def test_learn_same_kind_updates_status_in_place(table: InodeTable) -> None:
    first = table.learn("f", file("f", size=1))
    table.remember(first)
    second = table.learn("f", file("f", size=2))
    assert second is first
    assert second.status.size == 2
    assert second.lookups == 1


def test_inode_lives_until_lookup_count_reaches_zero(table: InodeTable) -> None:
    inode = table.learn("f", file("f"))
    table.remember(inode)
    table.remember(inode)
    table.remember(inode)
    table.forget(inode.ino, 2)
    assert table.get(inode.ino) is inode
    assert inode.lookups == 1
    table.forget(inode.ino, 1)
    with pytest.raises(StaleFile):
        table.get(inode.ino)
    assert table.by_path("f") is None
    assert len(table) == 1


def test_forget_unknown_and_root_are_ignored(table: InodeTable) -> None:
    table.forget(12345, 1)
    table.forget(ROOT_INODE, 10)
    assert table.get(ROOT_INODE).lookups == 1
    assert len(table) == 1


def test_same_number_after_forget_and_relearn(table: InodeTable) -> None:
    inode = table.learn("a/b", file("b"))
    table.remember(inode)
    number = inode.ino
    table.forget(number, 1)
    assert len(table) == 1
    again = table.learn("a/b", file("b"))
    assert again is not inode
    assert again.ino == number


def test_get_unknown_raises_stale(table: InodeTable) -> None:
    with pytest.raises(StaleFile) as info:
        table.get(inode_number("never/seen"))
    assert info.value.errno == errno.ESTALE


def test_hash_collision_probes_to_another_number(
    table: InodeTable, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def colliding(path: str, probe: int = 0) -> int:
        return 1000 + probe  # every path hashes alike

    monkeypatch.setattr(inodes, "inode_number", colliding)
    a = table.learn("a", file("a"))
    b = table.learn("b", file("b"))
    c = table.learn("c", file("c"))
    assert (a.ino, b.ino, c.ino) == (1000, 1001, 1002)
    assert table.get(1001) is b
    assert table.by_path("a") is a
    # Once "a" leaves, its number is free again for the next newcomer.
    table.discard_if_unused(a)
    d = table.learn("d", file("d"))
    assert d.ino == 1000
    assert table.get(1001) is b


def test_collision_with_root_number_is_avoided(
    table: InodeTable, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inodes, "inode_number", lambda path, probe=0: ROOT_INODE + probe)
    inode = table.learn("x", file("x"))
    assert inode.ino == 2
    assert table.get(ROOT_INODE).path == ""


def test_kind_change_gives_new_number_old_stays_until_forgotten(table: InodeTable) -> None:
    old = table.learn("p", file("p"))
    table.remember(old)
    new = table.learn("p", directory("p"))
    assert new is not old
    assert new.ino != old.ino
    assert new.status.kind is Kind.DIRECTORY
    assert table.by_path("p") is new
    # The kernel still holds the old number: it must keep working until forgotten.
    assert table.get(old.ino) is old
    assert old.status.kind is Kind.FILE
    table.remember(new)
    table.forget(old.ino, 1)
    with pytest.raises(StaleFile):
        table.get(old.ino)
    # Forgetting the old inode must not unhook the path from the new one.
    assert table.by_path("p") is new
    assert table.get(new.ino) is new


def test_kind_change_back_and_forth_keeps_numbers_distinct(table: InodeTable) -> None:
    f1 = table.learn("p", file("p"))
    table.remember(f1)
    d = table.learn("p", directory("p"))
    table.remember(d)
    f2 = table.learn("p", file("p"))
    assert len({f1.ino, d.ino, f2.ino}) == 3
    assert table.by_path("p") is f2
    assert len(table) == 4


def test_discard_if_unused(table: InodeTable) -> None:
    unused = table.learn("u", file("u"))
    used = table.learn("v", file("v"))
    table.remember(used)
    table.discard_if_unused(unused)
    table.discard_if_unused(used)
    table.discard_if_unused(table.get(ROOT_INODE))
    with pytest.raises(StaleFile):
        table.get(unused.ino)
    assert table.by_path("u") is None
    assert table.get(used.ino) is used
    assert table.get(ROOT_INODE).ino == ROOT_INODE
    assert len(table) == 2


def test_an_inode_learned_from_a_listing_reads_its_status_there(table: InodeTable) -> None:
    """Entry ``i`` of a listing stands for the status until something newer is learned;
    what the kernel was handed (attrs_version) stays the version it was handed."""
    old = FileStatus("f", Kind.FILE, size=3, mtime_ns=1)
    listing = Listing([FileStatus("e", Kind.DIRECTORY), old])
    inode = table.learn("d/f", listing[1], (listing, 1))
    assert inode.status == old and inode.kind is Kind.FILE and inode.is_listed(listing, 1)
    inode.attrs_given()
    assert inode.attrs_version == old.version
    same = FileStatus("f", Kind.FILE, size=3, mtime_ns=1, mode=0o600)
    assert table.learn("d/f", same) is inode  # the same version, with its attributes
    assert inode.status == same and not inode.is_listed(listing, 1)
    assert inode.attrs_version == old.version
    new = FileStatus("f", Kind.FILE, size=4, mtime_ns=2)
    table.learn("d/f", new)
    assert inode.status == new
    assert inode.attrs_version == old.version  # the kernel still holds the old size
    inode.attrs_given()
    assert inode.attrs_version == new.version
    relisted = Listing([new])
    table.learn("d/f", relisted[0], (relisted, 0))
    assert inode.is_listed(relisted, 0) and inode.attrs_version == new.version


def test_the_tables_are_sized_down_once_the_kernel_forgets_most_inodes(
    table: InodeTable, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inodes, "_SHRINK_FROM", 100)
    learned = [table.learn(f"f{i}", file(f"f{i}")) for i in range(400)]
    for inode in learned:
        table.remember(inode)
    big = sys.getsizeof(table._by_ino)
    for inode in learned[:350]:
        table.forget(inode.ino, 1)
    assert sys.getsizeof(table._by_ino) < big / 2  # copied into a table of its size
    assert len(table) == 51 and all(table.get(i.ino) is i for i in learned[350:])
    assert all(table.by_path(i.path) is i for i in learned[350:])
    assert table.by_path("f0") is None


# -- inodes kept as rows of the listing they were handed from


def hand_out(table: InodeTable, directory: str, listing: Listing) -> list[int]:
    """Every entry of ``listing`` handed to the kernel once, as readdir does."""
    numbers = []
    for index, name in enumerate(listing.names()):
        path = f"{directory}/{name}" if directory else name
        number = table.hold_row(path, directory, listing, index)
        assert number is not None
        numbers.append(number)
    return numbers


def test_a_row_has_its_paths_number_and_becomes_an_object_when_asked_for(
    table: InodeTable,
) -> None:
    listing = Listing([file("a", 5), directory("b"), file("c", 7)])
    numbers = hand_out(table, "d", listing)
    assert numbers == [inode_number(p) for p in ("d/a", "d/b", "d/c")]
    assert len(table) == 4 and sorted(table.numbers()) == sorted([ROOT_INODE, *numbers])
    assert table.number_for("d/c") == numbers[2]
    assert table._by_path.keys() == {""}  # no object for any of them yet
    inode = table.get(numbers[0])
    assert (inode.ino, inode.path, inode.lookups) == (numbers[0], "d/a", 1)
    assert inode.status == file("a", 5)
    assert inode.is_listed(listing, 0) and inode.attrs_version == listing[0].version
    assert table.get(numbers[0]) is inode and table.by_path("d/a") is inode
    found = table.by_path("d/c")
    assert found is not None and found.ino == numbers[2] and found.lookups == 1
    assert len(table) == 4


def test_a_reference_the_kernel_did_not_take_is_given_back(table: InodeTable) -> None:
    listing = Listing([file("a")])
    (a,) = hand_out(table, "", listing)
    assert table.hold_row("a", "", listing, 0) == a
    table.forget(a, 1)  # the reply buffer was full
    assert table.get(a).lookups == 1


def test_rows_count_references_and_leave_when_forgotten(table: InodeTable) -> None:
    listing = Listing([file("a"), file("b")])
    a, b = hand_out(table, "", listing)
    hand_out(table, "", listing)  # a second ls: two references each
    table.forget(a, 1)
    assert table.get(a).lookups == 1
    table.forget(b, 2)
    with pytest.raises(StaleFile):
        table.get(b)
    assert table.by_path("b") is None and len(table) == 2
    assert table._rows == {}  # the last row of the listing went: it holds none of it
    table.forget(a, 1)
    assert len(table) == 1


def test_a_number_an_object_holds_is_no_row(table: InodeTable) -> None:
    detached = table.learn("f", file("f"))
    table.remember(detached)
    table.unlink("f")  # removed while open: it keeps its number until forgotten
    listing = Listing([file("f", 9)])
    assert table.hold_row("f", "", listing, 0) is None
    inode = table.learn("f", listing[0], (listing, 0))
    assert inode.ino != detached.ino and table.get(detached.ino) is detached
    assert table.hold_row("f", "", listing, 0) is None  # an object has the path
    assert table._rows == {} and len(table._numbers) == 0


def test_a_row_moves_to_a_newer_listing_only_with_the_same_status(table: InodeTable) -> None:
    old = Listing([file("a", 1), file("b", 1)])
    a, b = hand_out(table, "d", old)
    new = Listing([file("a", 1), file("b", 2)])
    assert table.hold_row("d/a", "d", new, 0) == a
    assert table.hold_row("d/b", "d", new, 1) is None  # changed: the object way decides
    assert table.hold_row("d/a", "d", new, 0) == a  # now a row of the new listing
    newest = Listing([file("a", 5)])
    assert table.hold_row("d/a", "d", newest, 0) is None
    assert id(newest) not in table._rows_of  # no rows kept for a listing holding none
    assert table.get(a).lookups == 3 and table.get(a).is_listed(new, 0)
    assert table.get(b).status == file("b", 1) and table.get(b).lookups == 1


def test_renaming_a_directory_takes_its_rows_along(table: InodeTable) -> None:
    d = table.learn("d", directory("d"))
    table.remember(d)
    listing = Listing([file("x"), directory("sub")])
    sub, x = hand_out(table, "d", listing)
    inner = Listing([file("y")])
    (y,) = hand_out(table, "d/sub", inner)
    table.rename("d", "e")
    assert [table.get(n).path for n in (x, sub, y)] == ["e/x", "e/sub", "e/sub/y"]
    assert table.by_path("e/sub/y") is table.get(y) and table.by_path("d/x") is None


def test_unlinking_a_row_keeps_its_inode_until_forgotten(table: InodeTable) -> None:
    listing = Listing([file("f")])
    (f,) = hand_out(table, "", listing)
    table.unlink("f")
    inode = table.get(f)
    assert not table.is_linked(inode) and table.by_path("f") is None
    again = table.learn("f", file("f", 2))
    assert again.ino != f
    table.forget(f, 1)
    with pytest.raises(StaleFile):
        table.get(f)


def test_the_number_map_agrees_with_a_dict_through_growth_clashes_and_shrinking() -> None:
    """Keys that share their low bits probe on; removing one shifts the others back, so
    none is lost; the arrays grow and shrink with the count."""
    rng = random.Random(17)
    numbers = inodes._NumberMap()
    model: dict[int, int] = {}
    keys = [rng.getrandbits(62) << 1 | 1 for _ in range(3000)]
    keys += [(k & ~0xFFF) | 0x10 for k in keys[:300]]  # clash in the low 12 bits
    for step in range(20_000):
        key = rng.choice(keys)
        if rng.random() < (0.6 if step < 10_000 else 0.3):
            numbers.put(key, step)
            model[key] = step
        else:
            numbers.pop(key)
            model.pop(key, None)
        if step % 2000 == 0:
            assert {k: numbers.get(k) for k in keys if numbers.get(k) >= 0} == model
    assert len(numbers) == len(model) and sorted(numbers) == sorted(model)
    assert all(numbers.get(k) == v for k, v in model.items())
    largest = len(numbers._keys)
    for key in list(model):
        numbers.pop(key)
    assert len(numbers) == 0 and len(numbers._keys) < largest


def test_rows_ids_wrap_around_past_those_in_use(table: InodeTable) -> None:
    (first,) = hand_out(table, "a", Listing([file("x")]))  # rows id 0, held
    table._next_rows = inodes._ROWS_ID
    (last,) = hand_out(table, "b", Listing([file("x")]))
    (wrapped,) = hand_out(table, "c", Listing([file("x")]))
    assert sorted(table._rows) == [0, 1, inodes._ROWS_ID]
    assert [table.get(n).path for n in (first, last, wrapped)] == ["a/x", "b/x", "c/x"]


# -- hard links


def linked(name: str, file_id: int, nlink: int = 2) -> FileStatus:
    return FileStatus(name, Kind.FILE, size=1, mtime_ns=1, nlink=nlink, file_id=file_id)


def test_names_of_one_file_are_one_inode_whichever_comes_first(table: InodeTable) -> None:
    a = table.learn("d/a", linked("a", 7))
    b = table.learn("e/b", linked("b", 7))
    assert b is a and a.names == ["d/a", "e/b"]
    assert table.by_path("e/b") is a
    assert table.learn("c", linked("c", 8)) is not a  # another file
    # Numbered by the file, not a name: a table that learns them the other way round
    # gives the same number.
    other = InodeTable(ROOT)
    assert other.learn("e/b", linked("b", 7)).ino == a.ino != inode_number("d/a")


def test_a_removed_name_leaves_the_file_to_its_others(table: InodeTable) -> None:
    a = table.learn("a", file("a"))
    table.add_name(a, "b", linked("b", 7))  # link(2) through the mount
    a.lookups = 1
    assert table.learn("a", linked("a", 7)) is a
    table.unlink("a")
    assert a.path == "b" and a.aliases is None and table.is_linked(a)
    assert table.by_path("a") is None
    table.rename("b", "c")
    assert a.path == "c" and table.by_path("c") is a
    table.unlink("c")
    assert a.path == "c" and not table.is_linked(a)  # removed, still open: read by it
    table.forget(a.ino, 1)
    assert len(table) == 1


def test_renaming_an_alias_keeps_the_path(table: InodeTable) -> None:
    a = table.learn("a", linked("a", 7))
    table.learn("b", linked("b", 7))
    table.rename("b", "dir/c")
    assert (a.path, a.aliases) == ("a", ["dir/c"])
    a.lookups = 1
    table.forget(a.ino, 1)  # every name goes with the inode
    assert table.by_path("a") is None and table.by_path("dir/c") is None


def test_an_identity_given_up_is_not_taken_for_a_later_file(table: InodeTable) -> None:
    """A commit renames a new file over a name: the old file's identity may be reused by
    the file system for a file made later, which is not this inode."""
    a = table.learn("a", linked("a", 7))
    a.lookups = 1
    table.learn("a", linked("a", 9))  # committed: a new file under the name
    assert table.learn("new", linked("new", 7)) is not a
    assert table.learn("b", linked("b", 9)) is a


def test_a_listed_name_of_a_file_with_links_is_an_object(table: InodeTable) -> None:
    listing = Listing([linked("a", 7), file("b")])
    assert table.hold_row("a", "", listing, 0) is None
    assert table.hold_row("b", "", listing, 1) is not None
