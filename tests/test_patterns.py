"""``.dockerignore`` pattern semantics (llbgen.session.patterns).

Expected values were checked against Go's ``moby/patternmatcher`` v0.6.1 and ``filepath.Match``.
"""

from __future__ import annotations

import pytest

from llbgen.session.patterns import BadPattern, PatternMatcher, glob_match, go_clean, normalize_pattern


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        ("", "."),
        (".", "."),
        ("a/b/", "a/b"),
        ("a//b", "a/b"),
        ("./a/./b", "a/b"),
        ("a/../b", "b"),
        ("a/../../b", "../b"),
        ("/../a", "/a"),
        ("//a", "/a"),
        ("/", "/"),
        ("a b/ü", "a b/ü"),
    ],
)
def test_go_clean(path: str, cleaned: str) -> None:
    assert go_clean(path) == cleaned


@pytest.mark.parametrize(
    ("pattern", "normalized"),
    [
        ("/foo", "foo"),
        ("/foo/", "foo"),
        ("  foo  ", "foo"),
        ("!/foo", "!foo"),
        ("! foo/bar/", "!foo/bar"),
        ("./a/../b", "b"),
        ("/", "/"),
        ("", ""),
        ("   ", ""),
        ("**/*.go", "**/*.go"),
    ],
)
def test_normalize_pattern(pattern: str, normalized: str) -> None:
    assert normalize_pattern(pattern) == normalized


@pytest.mark.parametrize(
    ("pattern", "name", "matched"),
    [
        ("abc", "abc", True),
        ("*", "abc", True),
        ("*c", "abc", True),
        ("a*", "a", True),
        ("a*", "abc", True),
        ("a*", "ab/c", False),
        ("a*/b", "abc/b", True),
        ("a*/b", "a/c/b", False),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
        ("a*b?c*x", "abxbbxdbxebxczzx", True),
        ("a*b?c*x", "abxbbxdbxebxczzy", False),
        ("ab[c]", "abc", True),
        ("ab[b-d]", "abc", True),
        ("ab[e-g]", "abc", False),
        ("ab[^c]", "abc", False),
        ("ab[^e-g]", "abc", True),
        ("a\\*b", "a*b", True),
        ("a\\*b", "ab", False),
        ("a?b", "a☺b", True),
        ("a[^a]b", "a☺b", True),
        ("a???b", "a☺b", False),
        ("[a-ζ]*", "α", True),
        ("*[a-ζ]", "A", False),
        ("a?b", "a/b", False),
        ("a*b", "a/b", False),
        ("[\\]a]", "]", True),
        ("[\\-]", "-", True),
        ("[x\\-]", "x", True),
        ("*x", "xxx", True),
        # The rest of a chunk is not checked once a chunk before it failed to match.
        ("x*a[", "y", False),
    ],
)
def test_glob_match(pattern: str, name: str, matched: bool) -> None:
    assert glob_match(pattern, name) is matched


@pytest.mark.parametrize(
    ("pattern", "name"),
    [
        ("[]a]", "]"),
        ("[-]", "-"),
        ("[x-]", "x"),
        ("[", "a"),
        ("[^", "a"),
        ("[^bc", "a"),
        ("a[", "a"),
        ("a[", "x"),
        ("\\", "a"),
        ("a\\", "a"),
    ],
)
def test_glob_match_bad_pattern(pattern: str, name: str) -> None:
    with pytest.raises(BadPattern):
        glob_match(pattern, name)


MATCH_CASES = [
    # pattern(s), path, matched
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**/**", "dir/file", True),
    ("**/file", "file", True),
    ("**/file", "dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file", "dir/file2", False),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir", False),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("a\\\\", "a\\", True),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("ü/*.txt", "ü/ß.txt", True),
    ("a b/*", "a b/c d", True),
    # A parent directory that matches selects everything below it.
    ("docs", "docs/a/b", True),
    ("*/b", "a/b/c", True),
    # Later patterns win; "!" re-includes.
    (["docs", "!docs/keep.md"], "docs/keep.md", False),
    (["docs", "!docs/keep.md"], "docs/other.md", True),
    (["docs", "!docs/keep.md"], "docs", True),
    (["docs", "!docs/**/keep.md"], "docs/deep/keep.md", False),
    (["*.go", "!main.go"], "main.go", False),
    (["*.go", "!main.go"], "sub/main.go", False),  # "*" never crosses a "/"
    (["*.go", "!main.go"], "x.go", True),
    (["!foo"], "foo", False),
    (["a", "!a/b", "a/b/c"], "a/b/c", True),
    (["a", "!a/b", "a/b/c"], "a/b/d", False),
    # Cleaned like filepath.Clean; a leading "/" is *not* dropped by the matcher itself.
    ("./a/../b", "b", True),
    ("a/", "a", True),
    ("/a", "a", False),
    ("  a  ", "a", True),
]


@pytest.mark.parametrize(("patterns", "path", "matched"), MATCH_CASES)
def test_matches_or_parent_matches(patterns: str | list[str], path: str, matched: bool) -> None:
    matcher = PatternMatcher([patterns] if isinstance(patterns, str) else patterns)
    assert matcher.matches_or_parent_matches(path) is matched


def test_matches_using_parent_results_reuses_parent_matches() -> None:
    matcher = PatternMatcher(["docs", "!docs/keep.md", "*.tmp"])
    docs, info = matcher.matches_using_parent_results("docs", None)
    assert docs is True
    assert matcher.matches_using_parent_results("docs/keep.md", info)[0] is False
    assert matcher.matches_using_parent_results("docs/other.md", info)[0] is True
    top, top_info = matcher.matches_using_parent_results("src", None)
    assert top is False
    assert (
        matcher.matches_using_parent_results("src/x.tmp", top_info)[0] is False
    )  # "*.tmp" is top-level only
    assert matcher.matches_using_parent_results("a.tmp", None)[0] is True
    with pytest.raises(ValueError):
        matcher.matches_using_parent_results("docs/x", (True,))


def test_exclusions_flag_and_patterns() -> None:
    matcher = PatternMatcher(["a", "", "  ", "!b/c/"])
    assert [(p.text, p.exclusion) for p in matcher.patterns] == [("a", False), ("b/c", True)]
    assert matcher.exclusions
    assert not PatternMatcher(["a"]).exclusions


@pytest.mark.parametrize("patterns", [["!"], ["["], ["a\\"], ["[]a]"], ["[a-]"], ["ok", "x[^"]])
def test_bad_patterns_are_rejected(patterns: list[str]) -> None:
    with pytest.raises(BadPattern):
        PatternMatcher(patterns)


def test_regex_error_surfaces_when_the_pattern_is_used() -> None:
    # filepath.Match accepts it (the first chunk already fails on "."), the regexp does not:
    # like Go, the error comes when matching.
    matcher = PatternMatcher(["c/**-["])
    with pytest.raises(BadPattern):
        matcher.matches_or_parent_matches("c/x")
