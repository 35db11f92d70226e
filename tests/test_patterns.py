"""Path patterns: parsing, matching, formatting, entity ids and scans."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from eventrunner.core.errors import PatternError
from eventrunner.core.patterns import (
    NO_VARS_ID,
    Pattern,
    check_value,
    entity_id,
    is_temp_name,
    parse_entity_id,
    parse_pattern,
)
from eventrunner.state.scan import scan

DATE = r"logs/{date:\d{4}-\d{2}-\d{2}}.md"

# Values that are legal path segments but stress escaping, encoding and ambiguity.
TRICKY_VALUES = [
    "plain",
    "%",
    "%%",
    "%25",
    "%2F",
    "%2C%3D",
    "a,b",
    "a=b",
    "=",
    ",",
    "=,%",
    "x=1,y=2",
    "_",
    "...",
    ".hidden",
    "a b",
    "ünïcödé",
    "日本語",
    "emoji 🎉",
    "-",
    "{x}",
    "a" * 255,
    "é" * 127,
]

# Values a variable must never take, each with a fragment of the reason given.
HOSTILE_VALUES = [
    ("", "empty"),
    (".", "'.'"),
    ("..", "'..'"),
    ("../x", "separator"),
    ("a/b", "separator"),
    ("/", "separator"),
    ("a\\b", "separator"),
    ("a\x00b", "control"),
    ("a\nb", "control"),
    ("a\x7fb", "control"),
    ("a\x85b", "control"),
    ("a" * 256, "256 bytes"),
    ("é" * 128, "256 bytes"),
    ("bad\udcff", "UTF-8"),
]


def write(root: Path, *relpaths: str) -> None:
    """Create empty files (and their folders) under root."""
    for relpath in relpaths:
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(relpath)


def scanned(pattern: str, root: Path) -> list[tuple[str, dict[str, str]]]:
    return list(scan(parse_pattern(pattern), root))


# --- parse_pattern ---------------------------------------------------------------------------


def test_constraint_with_braces_is_parsed_by_balancing_braces() -> None:
    p = parse_pattern(DATE)
    assert p.text == DATE
    assert p.key == "logs/{date}.md"
    assert p.variables == ("date",)
    assert dict(p.constraints) == {"date": r"\d{4}-\d{2}-\d{2}"}


def test_variables_are_listed_once_in_order_of_first_appearance() -> None:
    p = parse_pattern("{b}/{a}-{b}/{c}.json")
    assert p.variables == ("b", "a", "c")
    assert p.key == "{b}/{a}-{b}/{c}.json"


def test_escaped_brace_and_braces_in_a_character_class_do_not_end_the_constraint() -> None:
    p = parse_pattern(r"x/{a:a\}b}/{c:[{}]+}")
    assert dict(p.constraints) == {"a": r"a\}b", "c": "[{}]+"}
    assert p.match("x/a}b/{}}") == {"a": "a}b", "c": "{}}"}


def test_a_constraint_declared_on_any_occurrence_applies_to_all() -> None:
    p = parse_pattern(r"{n}/{n:\d+}.md")
    assert p.match("12/12.md") == {"n": "12"}
    assert p.match("ab/ab.md") is None


def test_the_same_constraint_declared_twice_is_accepted() -> None:
    assert parse_pattern(r"{n:\d+}/{n:\d+}").key == "{n}/{n}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty pattern"),
        ("/logs/{date}.md", "absolute"),
        ("logs\\{date}.md", "backslash"),
        ("logs//{date}.md", "segment 2 is empty"),
        ("logs/{date}.md/", "trailing '/'"),
        ("./logs/{date}.md", "'.'"),
        ("logs/../{date}.md", "'..'"),
        ("logs/{date.md", "unbalanced '{'"),
        ("logs/date}.md", "unbalanced '}'"),
        (r"logs/{date:\d{4}.md", "unbalanced '{'"),
        ("logs/{}.md", "empty variable name"),
        ("logs/{:x}.md", "empty variable name"),
        ("logs/{1date}.md", "not an identifier"),
        ("logs/{da-te}.md", "not an identifier"),
        ("logs/{a/b}.md", "not an identifier"),
        ("logs/{date:}.md", "empty constraint"),
        ("logs/{date:(}.md", "missing ), unterminated subpattern"),
        ("logs/{date:*}.md", "nothing to repeat"),
        (r"{a:\d+}/{a:\w+}", "two different constraints"),
        (".eventrunner/{x}.json", "reserved"),
        ("data/.eventrunner/{x}.json", "reserved"),
        ("logs/a\x00b/{x}", "control character"),
    ],
)
def test_parse_pattern_refuses_with_a_clear_reason(text: str, reason: str) -> None:
    with pytest.raises(PatternError) as caught:
        parse_pattern(text)
    assert reason in str(caught.value)


def test_patterns_are_hashable_immutable_and_picklable() -> None:
    a, b = parse_pattern(DATE), parse_pattern(DATE)
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    with pytest.raises(TypeError):
        a.constraints["date"] = "x"  # type: ignore[index]
    again = pickle.loads(pickle.dumps(a))
    assert again == a and again.match("logs/2026-11-25.md") == {"date": "2026-11-25"}


def test_a_hand_built_pattern_with_a_bad_regex_is_refused() -> None:
    with pytest.raises(PatternError, match="bad regex"):
        Pattern("{a}", "{a}", ("a",), {"a": "("})


# --- static_prefix and is_literal ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "prefix", "literal"),
    [
        ("logs/{date}.md", "logs", False),
        ("{x}.md", "", False),
        ("a/b/{x}/c/{y}.json", "a/b", False),
        ("a/b-{x}/c.json", "a", False),
        ("config/settings.toml", "config", True),
        ("settings.toml", "", True),
    ],
)
def test_static_prefix_is_the_folder_before_the_first_variable_segment(
    text: str, prefix: str, literal: bool
) -> None:
    p = parse_pattern(text)
    assert p.static_prefix == prefix
    assert p.is_literal is literal


# --- match -----------------------------------------------------------------------------------


def test_constraint_with_braces_matches_only_dates() -> None:
    p = parse_pattern(DATE)
    assert p.match("logs/2026-11-25.md") == {"date": "2026-11-25"}
    for relpath in ["logs/2026-1-25.md", "logs/x2026-11-25.md", "logs/2026-11-25.txt"]:
        assert p.match(relpath) is None


def test_match_needs_the_same_number_of_segments() -> None:
    p = parse_pattern("logs/{date}.md")
    assert p.match("logs/a/b.md") is None
    assert p.match("b.md") is None
    assert p.match("logs//b.md") is None


def test_several_variables_in_one_segment_are_bound_together() -> None:
    p = parse_pattern("feeds/{source}-{item}.json")
    assert p.match("feeds/hn-42.json") == {"source": "hn", "item": "42"}
    assert p.match("feeds/hn.json") is None


def test_a_repeated_variable_must_take_the_same_value_everywhere() -> None:
    across = parse_pattern("{a}/{a}.md")
    assert across.match("x/x.md") == {"a": "x"}
    assert across.match("x/y.md") is None
    within = parse_pattern("{a}-{a}.md")
    assert within.match("x-x.md") == {"a": "x"}
    assert within.match("x-y.md") is None


def test_literal_text_is_matched_literally_not_as_regex() -> None:
    p = parse_pattern("a.b+(c)/{x}.md")
    assert p.match("a.b+(c)/1.md") == {"x": "1"}
    assert p.match("aXbb(c)/1.md") is None


def test_match_refuses_values_that_break_the_segment_rules() -> None:
    assert parse_pattern(".{a}").match("...") is None  # a == ".."
    assert parse_pattern("x{a}").match("x.") is None  # a == "."
    assert parse_pattern("{a}").match("a\x00b") is None
    assert parse_pattern("{a}").match("a\\b") is None
    assert parse_pattern("{a}").match("a" * 256) is None
    assert parse_pattern("{a}").match("a" * 255) == {"a": "a" * 255}


def test_match_skips_hidden_and_temp_names_like_scan_does() -> None:
    p = parse_pattern("inbox/{name}")
    assert p.match("inbox/.hidden") is None
    assert p.match("inbox/report.tmp") is None
    assert p.match("inbox/.er-tmp-123") is None
    assert parse_pattern("inbox/.{name}").match("inbox/.hidden") == {"name": "hidden"}
    assert parse_pattern(".{name}/x").match(".eventrunner/x") is None


# --- format ----------------------------------------------------------------------------------


def test_format_fills_every_variable_and_reads_back_the_same() -> None:
    p = parse_pattern("feeds/{source}/{source}-{item}.json")
    path = p.format({"source": "hn", "item": "42", "unused": "x"})
    assert path == "feeds/hn/hn-42.json"
    assert p.match(path) == {"source": "hn", "item": "42"}


def test_format_names_the_missing_variable() -> None:
    with pytest.raises(PatternError, match="missing value for variable 'item'"):
        parse_pattern("{source}-{item}.json").format({"source": "hn"})


@pytest.mark.parametrize(("value", "reason"), HOSTILE_VALUES)
def test_format_refuses_hostile_values_naming_the_variable_and_why(value: str, reason: str) -> None:
    with pytest.raises(PatternError) as caught:
        parse_pattern("out/{name}.md").format({"name": value})
    assert "'name'" in str(caught.value) and reason in str(caught.value)


def test_format_refuses_a_value_that_is_not_a_string() -> None:
    with pytest.raises(PatternError, match=r"'name'.*not a string"):
        parse_pattern("out/{name}.md").format({"name": 42})  # type: ignore[dict-item]


def test_format_accepts_percent_2f_as_a_literal_value() -> None:
    assert parse_pattern("out/{name}.md").format({"name": "%2F"}) == "out/%2F.md"


def test_format_refuses_a_value_that_breaks_the_constraint() -> None:
    with pytest.raises(PatternError, match=r"'date'.*does not match"):
        parse_pattern(DATE).format({"date": "2026-1-1"})


def test_format_refuses_values_whose_path_scan_would_skip() -> None:
    p = parse_pattern("inbox/{name}")
    for value in [".hidden", "x.tmp", ".er-tmp-1", "4913", "draft~"]:
        with pytest.raises(PatternError, match="hidden or temporary"):
            p.format({"name": value})


def test_format_refuses_values_that_would_read_back_as_other_values() -> None:
    p = parse_pattern("{a}-{b}.json")
    assert p.format({"a": "x", "b": "y-z"}) == "x-y-z.json"
    with pytest.raises(PatternError, match="ambiguous"):
        p.format({"a": "x-y", "b": "z"})


def test_format_refuses_a_segment_over_255_bytes_built_from_short_values() -> None:
    with pytest.raises(PatternError, match="over 255 bytes"):
        parse_pattern("{a}-{b}").format({"a": "a" * 200, "b": "b" * 200})


# --- with_constraints ------------------------------------------------------------------------


def test_with_constraints_merges_into_the_pattern_of_the_same_key() -> None:
    plain = parse_pattern("logs/{date}.md")
    merged = plain.with_constraints(parse_pattern(DATE).constraints)
    assert merged == parse_pattern(DATE)
    assert parse_pattern(merged.text) == merged
    assert merged.match("logs/nope.md") is None
    assert plain.match("logs/nope.md") == {"date": "nope"}


def test_with_constraints_puts_the_constraint_on_the_first_occurrence() -> None:
    merged = parse_pattern("{n}/{n}.md").with_constraints({"n": r"\d+"})
    assert merged.text == r"{n:\d+}/{n}.md"
    assert merged.match("1/1.md") == {"n": "1"} and merged.match("a/a.md") is None


def test_with_constraints_accepts_the_same_regex_and_ignores_other_variables() -> None:
    p = parse_pattern(DATE)
    assert p.with_constraints({"date": r"\d{4}-\d{2}-\d{2}", "other": "x"}) is p


def test_with_constraints_refuses_a_different_regex_for_the_same_variable() -> None:
    with pytest.raises(PatternError, match=r"'date' has two constraints"):
        parse_pattern(DATE).with_constraints({"date": r"\d+"})


def test_with_constraints_refuses_a_bad_regex() -> None:
    with pytest.raises(PatternError, match="bad regex"):
        parse_pattern("{a}").with_constraints({"a": "(("})


# --- check_value -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "reason"), HOSTILE_VALUES)
def test_check_value_refuses_hostile_values(value: str, reason: str) -> None:
    with pytest.raises(PatternError) as caught:
        check_value("item", value)
    assert "'item'" in str(caught.value) and reason in str(caught.value)


@pytest.mark.parametrize("value", TRICKY_VALUES)
def test_check_value_accepts_odd_but_safe_segments(value: str) -> None:
    check_value("item", value)


# --- entity ids ------------------------------------------------------------------------------


def test_entity_id_forms_for_zero_one_and_several_variables() -> None:
    assert entity_id([], {}) == NO_VARS_ID == "_"
    assert entity_id(["date"], {"date": "2026-11-25", "extra": "x"}) == "2026-11-25"
    assert entity_id(["source", "item"], {"item": "42", "source": "hn"}) == "source=hn,item=42"


def test_entity_id_percent_encodes_percent_comma_and_equals_in_every_form() -> None:
    assert entity_id(["a"], {"a": "1%,="}) == "1%25%2C%3D"
    assert entity_id(["a", "b"], {"a": "x=1", "b": "%2F,"}) == "a=x%3D1,b=%252F%2C"


def test_entity_id_refuses_missing_or_hostile_values() -> None:
    with pytest.raises(PatternError, match="'b'"):
        entity_id(["a", "b"], {"a": "1"})
    with pytest.raises(PatternError, match="separator"):
        entity_id(["a"], {"a": "../x"})


@pytest.mark.parametrize("value", TRICKY_VALUES)
def test_entity_id_round_trips_for_one_and_several_variables(value: str) -> None:
    one = {"x": value}
    assert parse_entity_id(["x"], entity_id(["x"], one)) == one
    several = {"x": value, "y": value[::-1], "z": "plain"}
    assert parse_entity_id(["x", "y", "z"], entity_id(["x", "y", "z"], several)) == several


def test_parse_entity_id_accepts_pairs_in_any_order_and_named_single_values() -> None:
    assert parse_entity_id(["a", "b"], "b=2,a=1") == {"a": "1", "b": "2"}
    assert list(parse_entity_id(["a", "b"], "b=2,a=1")) == ["a", "b"]
    assert parse_entity_id(["date"], "date=2026-11-25") == {"date": "2026-11-25"}
    assert parse_entity_id([], "_") == {}
    assert parse_entity_id(["x"], "_") == {"x": "_"}


@pytest.mark.parametrize(
    ("variables", "text", "reason"),
    [
        ([], "x", "expected '_'"),
        (["a"], "b=1", "unexpected or repeated 'b'"),
        (["a"], "a,b", "unescaped ','"),
        (["a"], "", "empty"),
        (["a"], "%2F", "bad escape '%2F'"),
        (["a"], "100%", "bad escape '%'"),
        (["a"], "%4", "bad escape '%4'"),
        (["a"], "..", "'..'"),
        (["a"], "a=..%2F", "bad escape"),
        (["a", "b"], "a=1", "missing ['b']"),
        (["a", "b"], "a=1,b=2,c=3", "unexpected or repeated 'c'"),
        (["a", "b"], "a=1,a=2,b=3", "unexpected or repeated 'a'"),
        (["a", "b"], "a=1,b", "'b' is not name=value"),
        (["a", "b"], "a=1=2,b=3", "is not name=value"),
        (["a", "b"], "12", "is not name=value"),
        (["a", "b"], "a=1,b=", "empty"),
    ],
)
def test_parse_entity_id_refuses_malformed_text(
    variables: list[str], text: str, reason: str
) -> None:
    with pytest.raises(PatternError) as caught:
        parse_entity_id(variables, text)
    assert reason in str(caught.value)


# --- is_temp_name ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        ".er-tmp-abc123",
        ".er-tmp-",
        "post.md.tmp",
        ".post.md.swp",
        ".post.md.swx",
        "post.md~",
        ".#post.md",
        "#post.md#",
        "video.mp4.part",
        "video.mp4.crdownload",
        "4913",
    ],
)
def test_is_temp_name_recognises_our_temp_files_and_editor_leftovers(name: str) -> None:
    assert is_temp_name(name)


@pytest.mark.parametrize(
    "name", ["post.md", "tmp", "x.tmpl", "#", "#notes", "49130", "a~b", "er-tmp-x", "partial"]
)
def test_is_temp_name_leaves_ordinary_names_alone(name: str) -> None:
    assert not is_temp_name(name)


# --- scan ------------------------------------------------------------------------------------


def test_scan_finds_nested_matches_in_sorted_order_with_their_values(tmp_path: Path) -> None:
    write(
        tmp_path,
        "feeds/lobsters/items/7.json",
        "feeds/hn/items/42.json",
        "feeds/hn/items/100.json",
        "feeds/hn/items/readme.txt",
        "feeds/hn/other/1.json",
        "elsewhere/hn/items/1.json",
    )
    assert scanned("feeds/{source}/items/{item}.json", tmp_path) == [
        ("feeds/hn/items/100.json", {"source": "hn", "item": "100"}),
        ("feeds/hn/items/42.json", {"source": "hn", "item": "42"}),
        ("feeds/lobsters/items/7.json", {"source": "lobsters", "item": "7"}),
    ]


def test_scan_prunes_folders_that_fail_a_constraint(tmp_path: Path) -> None:
    write(tmp_path, "2026/01/a.md", "2026/02/b.md", "draft/01/c.md", "2026/xx/d.md")
    found = scanned(r"{year:\d{4}}/{month:\d\d}/{name}.md", tmp_path)
    assert [relpath for relpath, _ in found] == ["2026/01/a.md", "2026/02/b.md"]


def test_scan_binds_several_variables_in_one_segment(tmp_path: Path) -> None:
    write(tmp_path, "items/hn-42.json", "items/lobsters-7.json", "items/nodash.json")
    assert scanned("items/{source}-{item}.json", tmp_path) == [
        ("items/hn-42.json", {"source": "hn", "item": "42"}),
        ("items/lobsters-7.json", {"source": "lobsters", "item": "7"}),
    ]


def test_scan_keeps_only_equal_values_of_a_repeated_variable(tmp_path: Path) -> None:
    write(tmp_path, "a/a.md", "a/b.md", "b/b.md")
    assert [r for r, _ in scanned("{x}/{x}.md", tmp_path)] == ["a/a.md", "b/b.md"]


def test_scan_skips_temp_and_hidden_names(tmp_path: Path) -> None:
    temp = [".er-tmp-1", "a.tmp", ".a.swp", ".a.swx", "a~", ".#a", "#a#", "a.part", "4913"]
    write(tmp_path, "inbox/keep.md", "inbox/.hidden", "inbox/.dir/x", *[f"inbox/{n}" for n in temp])
    assert scanned("inbox/{name}", tmp_path) == [("inbox/keep.md", {"name": "keep.md"})]
    assert [r for r, _ in scanned("inbox/.{name}", tmp_path)] == ["inbox/.dir", "inbox/.hidden"]


def test_scan_never_enters_the_state_folder(tmp_path: Path) -> None:
    write(tmp_path, ".eventrunner/x.json", ".config/x.json", "sub/.eventrunner/x.json")
    assert [r for r, _ in scanned(".{name}/x.json", tmp_path)] == [".config/x.json"]
    assert scanned("{dir}/{name}/x.json", tmp_path) == []


def test_scan_of_a_literal_pattern_finds_the_one_path_if_present(tmp_path: Path) -> None:
    assert scanned("config/settings.toml", tmp_path) == []
    write(tmp_path, "config/settings.toml")
    assert scanned("config/settings.toml", tmp_path) == [("config/settings.toml", {})]


def test_scan_of_a_missing_root_or_prefix_yields_nothing(tmp_path: Path) -> None:
    assert scanned("logs/{date}.md", tmp_path) == []
    assert scanned("{x}.md", tmp_path / "missing") == []


def test_scan_yields_folders_at_the_last_segment_for_folder_outputs(tmp_path: Path) -> None:
    (tmp_path / "site" / "2026").mkdir(parents=True)
    write(tmp_path, "site/2026/index.html", "site/2027")
    assert [r for r, _ in scanned("site/{year}", tmp_path)] == ["site/2026", "site/2027"]


def test_scan_follows_symlinks_inside_the_root_but_not_outside(tmp_path: Path) -> None:
    # Given data with an internal alias and links escaping the root
    root, outside = tmp_path / "root", tmp_path / "outside"
    write(outside, "x/1.md", "2.md")
    write(root, "real/3.md")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    (root / "escape").symlink_to(outside / "x", target_is_directory=True)
    (root / "real" / "4.md").symlink_to(outside / "2.md")
    # When the root is scanned, then only paths that stay inside it come back
    assert [r for r, _ in scanned("{dir}/{n}.md", root)] == ["alias/3.md", "real/3.md"]


def test_scan_and_match_agree_on_every_path(tmp_path: Path) -> None:
    write(tmp_path, "in/a-1.md", "in/.b-2.md", "in/c-3.md~", "in/d-4.md", "in/d-d.md", "in/x.md")
    p = parse_pattern(r"in/{a}-{n:\d+}.md")
    found = list(scan(p, tmp_path))
    assert [r for r, _ in found] == ["in/a-1.md", "in/d-4.md"]
    for relpath, values in found:
        assert p.match(relpath) == values
        assert p.format(values) == relpath
    assert all(p.match(f"in/{name}") is None for name in [".b-2.md", "c-3.md~", "d-d.md"])


def test_scan_finds_ten_thousand_files_in_one_folder_in_order(tmp_path: Path) -> None:
    # Speed is measured by the benchmarks, not asserted here.
    folder = tmp_path / "logs"
    folder.mkdir()
    for i in range(10_000):
        (folder / f"2026-{i // 400 + 1:02d}-{i % 400:04d}.md").touch()
    p = parse_pattern(r"logs/{date:\d{4}-\d{2}-\d{4}}.md")
    found = list(scan(p, tmp_path))
    assert len(found) == 10_000
    assert found[0][0] == "logs/2026-01-0000.md"
    assert found[-1] == ("logs/2026-25-0399.md", {"date": "2026-25-0399"})


def test_scan_accepts_a_root_given_as_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "logs/a.md")
    monkeypatch.chdir(tmp_path)
    assert scanned("logs/{n}.md", Path(".")) == [("logs/a.md", {"n": "a"})]


@pytest.mark.parametrize(
    "text, values, path",
    [
        ("inbox/{name}.txt", {"name": "a"}, "inbox/a.txt"),
        ("{name}", {"name": "a"}, "a"),
        ("{day}/raw.json", {"day": "2026-11-25"}, "2026-11-25/raw.json"),
        ("x/{id:[0-9]+}-v/out", {"id": "42"}, "x/42-v/out"),
        ("{a}/{b}.txt", {"a": "1", "b": "2"}, "1/2.txt"),
        ("{a}/{a}.txt", {"a": "1"}, "1/1.txt"),
        ("summary.md", {}, "summary.md"),
    ],
)
def test_join_gives_the_path_match_read_and_format_gives(
    text: str, values: dict, path: str
) -> None:
    # Given a pattern (one variable occurrence takes join's shortcut, others the general path)
    p = parse_pattern(text)
    # Then join, format and match agree
    assert p.join(values) == path
    assert p.format(values) == path
    assert p.match(path) == values


@pytest.mark.parametrize(
    "text, own, foreign",
    [
        ("count/{name}.txt", ["count/e1.txt", "count/a.b.txt"], ["other/e1.txt", "count/x/y.txt"]),
        ("a/{x}-{y}/{x}.txt", ["a/1-2/1.txt", "a/b-c-d/b.txt"], ["a/1.txt"]),
        ("b/{d:\\d+}.json", ["b/12.json"], []),
        ("{day}/log.md", ["2026-12-01/log.md"], ["2026/12/log.md", "x/other.md", "/log.md"]),
        ("in/{x}-{y}.txt", ["in/a-b.txt", "in/a-b-c.txt"], ["in/ab.txt"]),
    ],
)
def test_recorded_values_are_what_match_gives_for_the_patterns_own_paths(
    text: str, own: list[str], foreign: list[str]
) -> None:
    # Given a pattern, paths it matches and paths of another shape
    pattern = parse_pattern(text)
    # Then the values read back without re-checking are match()'s, and other shapes have none
    for path in own:
        assert pattern.match(path) is not None
        assert pattern.recorded_values(path) == pattern.match(path)
    for path in foreign:
        assert pattern.recorded_values(path) is None
