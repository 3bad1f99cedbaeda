"""RE2 patterns read by Python's re as Go reads them, and Go's template expansion."""

from __future__ import annotations

import re

import pytest

from fleetscope.query.goregex import compile_anchored, expand, translate


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        pytest.param("(?i)pro.*", ["production", "PROD"], ["xprod"], id="leading-flag"),
        pytest.param("((?i)PRO).*", ["production"], ["canary"], id="flag-inside-group"),
        pytest.param(".*(?i:TION)", ["production"], ["prod"], id="scoped-flag"),
        pytest.param("a(?i)b|c", ["ab", "aB", "C", "c"], ["AB"], id="flag-spans-alternation"),
        pytest.param("x(?i)y(?-i)z", ["xYz"], ["xYZ"], id="flag-off-again"),
        pytest.param("[[:digit:]]+", ["123"], ["12a"], id="posix-class"),
        pytest.param("[^[:alpha:]_]", ["1"], ["a", "_"], id="negated-bracket"),
        pytest.param(r"a\.b", ["a.b"], ["axb"], id="escape"),
        pytest.param(r"\Qa.b\E", ["a.b"], ["axb"], id="quoted"),
        pytest.param("[]a]+", ["]a]"], ["b"], id="bracket-first"),
        pytest.param(r"\pL+-\pN", ["gpu-1", "éa-2"], ["g1-1"], id="unicode-classes"),
        pytest.param(r"\PL", ["1"], ["a"], id="negated-unicode-class"),
        pytest.param(r"\x{67}pu", ["gpu"], ["xpu"], id="hex-escape"),
        pytest.param("a{,2}", ["a{,2}"], ["aa"], id="literal-brace"),
    ],
)
def test_translate_keeps_re2_meaning(pattern: str, matches: list[str], misses: list[str]) -> None:
    regex = compile_anchored(pattern)
    for text in matches:
        assert regex.match(text), (pattern, text)
    for text in misses:
        assert not regex.match(text), (pattern, text)


@pytest.mark.parametrize(
    "pattern", [r"(a)\1", "(?=a)", "(?<=a)b", "(a", r"\p{Greek}", "[^[:^alpha:]]"]
)
def test_what_re2_rejects_is_rejected(pattern: str) -> None:
    with pytest.raises((ValueError, re.error)):
        compile_anchored(pattern)


@pytest.mark.parametrize(
    ("pattern", "text", "groups"),
    [
        pytest.param("(?U)(a+)(a*)", "aaa", ("a", "aa"), id="ungreedy"),
        pytest.param("(?U)(a+?)(a*)", "aaa", ("aaa", ""), id="ungreedy-lazy-is-greedy"),
        pytest.param("(a+)(?U:(a*))(a*)", "aaa", ("aaa", "", ""), id="scoped"),
    ],
)
def test_ungreedy_flag_swaps_quantifiers(pattern: str, text: str, groups: tuple[str, ...]) -> None:
    m = compile_anchored(pattern).match(text)
    assert m is not None and m.groups() == groups


def test_translate_leaves_plain_patterns_alone() -> None:
    assert translate("api-.+|app-(server|worker)") == "api-.+|app-(server|worker)"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param("$1-$2", "source-value", id="numbers"),
        pytest.param("${1}x", "sourcex", id="braced"),
        pytest.param("$1x", "", id="longest-name"),
        pytest.param("$$1", "$1", id="dollar"),
        pytest.param("$name!", "10!", id="named"),
        pytest.param("$9", "", id="missing-group"),
        pytest.param("a$", "a$", id="trailing"),
        pytest.param("${1", "${1", id="unclosed"),
    ],
)
def test_expand_is_go_expand(template: str, expected: str) -> None:
    m = re.match(r"(.*)-(value)-(?P<name>.*)", "source-value-10")
    assert m is not None
    assert expand(template, m) == expected
