"""Rulebook files: a bad one is refused with its file, line and reason; lint lists everything;
users' files override and extend the built-ins; diff says what changed, entry by entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from onshore.errors import ConfigError
from onshore.rulebook import (
    RulebookError,
    RulebookNotFound,
    TransferRequest,
    builtin,
    check_text,
    diff,
    evaluate,
    lint_builtin,
    lint_text,
    load_file,
    load_rulebooks,
    load_text,
)
from onshore.rulebook.loader import _builtin_text

MINI = """\
jurisdiction: XX
title: Testland
version: "1"
effective: 2026-01-01
territory: [XX]
classes:
  personal:
    name: personal data
    members:
      xx.m.ids:
        categories: [vehicle_id, trajectory]
        deid_states: [raw, pseudonymized]
        source: test act s. 1
        confidence: checked
mechanisms:
  eu_scc:
    name: clauses
    source: test act s. 2
    confidence: checked
rules:
  xx.personal:
    summary: Personal data of 10 persons or more abroad needs clauses.
    applies_to: {classes: [personal]}
    destination: {scope: abroad}
    count:
      subject: person
      window: calendar_year
      when: [">= 10"]
    outcome: require
    mechanisms: [eu_scc]
    source: test act s. 3
    confidence: checked
  xx.rest:
    summary: Everything else is exempt.
    outcome: exempt
    source: test act s. 4
    confidence: unchecked
"""


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in text")


def test_the_minimal_rulebook_is_valid() -> None:
    book = load_text(MINI, "mini.yaml")
    assert book.key == "xx" and book.file == "mini.yaml"
    assert book.location("xx.rest") == ("mini.yaml", line_of(MINI, "xx.rest:"))
    report = lint_text(MINI, "mini.yaml")
    assert report.ok
    assert [w.where for w in report.warnings if "unchecked" in w.message] == ["rules.xx.rest"]


BAD = [
    # (what, old, new, needle on the offending line, words in the message)
    (
        "unknown category",
        "[vehicle_id, trajectory]",
        "[vehicle_id, trajectroy]",
        "trajectroy",
        "unknown category 'trajectroy'",
    ),
    ("bad operator", '[">= 10"]', '["=> 10"]', "=> 10", "bad operator"),
    ("not a number", '[">= 10"]', '[">= ten"]', ">= ten", "not a whole number"),
    ("missing source", "    source: test act s. 4\n", "", "xx.rest:", "missing 'source'"),
    (
        "unknown mechanism",
        "mechanisms: [eu_scc]",
        "mechanisms: [eu_sccs]",
        "[eu_sccs]",
        "unknown mechanism 'eu_sccs'",
    ),
    (
        "undeclared mechanism",
        "mechanisms: [eu_scc]",
        "mechanisms: [eu_bcr]",
        "[eu_bcr]",
        "not declared under 'mechanisms:'",
    ),
    (
        "prohibited as a mechanism",
        "mechanisms: [eu_scc]",
        "mechanisms: [prohibited]",
        "[prohibited]",
        "outcome: prohibited",
    ),
    ("duplicate rule id", "  xx.rest:", "  xx.personal:", "2:xx.personal:", "duplicate rule id"),
    ("bad date", "effective: 2026-01-01", "effective: 2026-13-01", "effective", "2026-13-01"),
    (
        "unknown class",
        "applies_to: {classes: [personal]}",
        "applies_to: {classes: [persona]}",
        "[persona]",
        "unknown legal class 'persona'",
    ),
    ("unknown field", "    outcome: exempt", "    outcome: exempt\n    sauce: x", "sauce", "sauce"),
    ("bad confidence", "confidence: unchecked", "confidence: maybe", "maybe", "'maybe'"),
    ("bad window", "window: calendar_year", "window: fiscal_year", "fiscal_year", "fiscal_year"),
    ("unquoted version", 'version: "1"', "version: 1.10", "version", "quote it"),
    ("norway", "territory: [XX]", "territory: [XX, NO]", "territory", "quote it"),
    (
        "require without mechanisms",
        "    mechanisms: [eu_scc]\n",
        "",
        "outcome: require",
        "needs 'mechanisms'",
    ),
    (
        "exempt with mechanisms",
        "    outcome: exempt\n",
        "    outcome: exempt\n    mechanisms: [eu_scc]\n",
        "mechanisms: [eu_scc]\n    source: test act s. 4",
        "takes no mechanisms",
    ),
    (
        "unknown country set",
        "destination: {scope: abroad}",
        "destination: {scope: abroad, not_in: [friends]}",
        "friends",
        "unknown country set 'friends'",
    ),
    ("bad deid state", "[raw, pseudonymized]", "[raw, hashed]", "hashed", "hashed"),
    (
        "yaml syntax",
        "    outcome: exempt",
        "    outcome: [exempt",
        "test act s. 4",  # where the parser noticed; the message names the line it opened on
        "flow sequence from line 35",
    ),
    (
        "id used twice across sections",
        "  xx.rest:",
        "  xx.m.ids:",
        "2:xx.m.ids:",
        "duplicate id 'xx.m.ids'",
    ),
    (
        "id that differs from its key",
        "    outcome: exempt",
        "    id: xx.other\n    outcome: exempt",
        "xx.other",
        "differs",
    ),
    ("bad rule id", "  xx.rest:", "  XX Rest:", "XX Rest", "bad rule id 'XX Rest'"),
    (
        "until before from",
        "    outcome: exempt",
        "    outcome: exempt\n    in_force: {from: 2026-02-01, until: 2026-01-01}",
        "in_force",
        "before",
    ),
]


@pytest.mark.parametrize(("what", "old", "new", "needle", "words"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_rulebook_names_file_line_and_reason(
    what: str, old: str, new: str, needle: str, words: str
) -> None:
    assert old in MINI, what
    text = MINI.replace(old, new, 1)
    if "\n" in needle:
        line = _line_of_block(text, needle)
    elif needle.startswith("2:"):
        line = line_of(text, needle[2:], occurrence=2)
    else:
        line = line_of(text, needle)
    with pytest.raises(RulebookError) as caught:
        load_text(text, "bad.yaml")
    error = caught.value
    assert isinstance(error, ConfigError) and error.code == "config.rulebook"
    assert error.message.startswith(f"bad.yaml:{line}:"), (error.message, line)
    assert words in error.message
    report = lint_text(text, "bad.yaml")
    assert not report.ok and report.errors[0].line == line


def _line_of_block(text: str, block: str) -> int:
    return text[: text.index(block)].count("\n") + 1


def test_lint_lists_every_error_not_only_the_first() -> None:
    text = MINI.replace("trajectory]", "trajectroy]").replace('">= 10"', '"=> 10"')
    report = lint_text(text, "bad.yaml")
    assert len(report.errors) == 2
    assert {e.line for e in report.errors} == {line_of(text, "trajectroy"), line_of(text, "=> 10")}
    with pytest.raises(RulebookError) as caught:
        load_text(text, "bad.yaml")
    assert len(caught.value.problems) == 2 and "2 error(s)" in (caught.value.hint or "")


def test_empty_and_non_mapping_files() -> None:
    assert "empty" in lint_text("", "e.yaml").errors[0].message
    assert "mapping" in lint_text("- a\n- b\n", "l.yaml").errors[0].message


def test_lint_warns_on_unchecked_rules_and_impossible_thresholds() -> None:
    text = MINI.replace('[">= 10"]', '[">= 10", "< 5"]')
    report = lint_text(text, "w.yaml")
    assert report.ok
    messages = [w.message for w in report.warnings]
    assert any("never matches" in m for m in messages)
    assert any("unchecked" in m for m in messages)


def test_lint_warns_on_categories_no_rule_covers() -> None:
    text = MINI.replace(
        "  xx.rest:\n    summary: Everything else is exempt.\n",
        "  xx.rest:\n    summary: Home only.\n    destination: {scope: domestic}\n",
    )
    report = lint_text(text, "gap.yaml")
    assert any("no rule applies to charging (raw)" in w.message for w in report.warnings)


def test_builtin_lint_is_clean_but_flags_unchecked_entries() -> None:
    for name in ("cn", "eu", "us"):
        report = lint_builtin(name)
        assert report.ok, report.errors
        assert all("unchecked" in w.message for w in report.warnings)
    cn = lint_builtin("cn")
    flagged = {w.where.split(".", 3)[-1] for w in cn.warnings}
    assert "cn.class.important.adas_training_data" in flagged


# -- users' files --------------------------------------------------------------------------------

RELAXED_CN = """\
extends: cn
version: "2026.1-acme"
effective: 2026-04-01
remove: [cn.class.important.adas_training_data]
rules:
  cn.cbdf.pi_under_100k:
    summary: Non-sensitive PI of fewer than 100,000 persons since 1 January is exempt.
    applies_to: {classes: [non_sensitive_pi]}
    destination: {scope: abroad}
    count: {subject: person, window: calendar_year, when: ["< 100_000"]}
    outcome: exempt
    source: Cross-Border Data Flows Provisions, Art. 5 (read by Acme counsel)
    confidence: checked
  cn.acme.no_faces_to_partners:
    summary: Acme never sends identifiable outside video abroad.
    applies_to: {categories: [outside_video_identifiable]}
    destination: {scope: abroad}
    outcome: prohibited
    source: Acme data policy 7
    confidence: checked
"""


def _adas(origin: str = "CN", category: str = "anonymized_motion") -> TransferRequest:
    return TransferRequest.model_validate(
        {
            "origin": origin,
            "destination": "US",
            "recipient": {"name": "R", "country": "US"},
            "purpose": "adas_training",
            "date": "2026-06-15",
            "data": [{"category": category, "subjects": 10, "deid_state": "anonymized"}],
        }
    )


def test_an_override_extends_the_builtin(tmp_path: Path) -> None:
    path = tmp_path / "cn-acme.yaml"
    path.write_text(RELAXED_CN)
    books = load_rulebooks({"cn": path})
    assert books.versions == {"cn": "2026.1-acme", "eu": "2026.1", "us": "2026.1"}
    assert evaluate(_adas(), load_rulebooks()).outcome == "require"
    relaxed = evaluate(_adas(), books)
    assert relaxed.exempt and relaxed.version == "2026.1-acme"
    assert evaluate(_adas(category="outside_video_identifiable"), books).prohibited
    cn = books["cn"]
    assert cn.location("cn.acme.no_faces_to_partners") == (
        str(path),
        line_of(RELAXED_CN, "acme.no_faces"),
    )
    assert cn.location("cn.order7.important_data")[0] == "builtin:cn"  # type: ignore[index]

    changes = {(c.kind, c.section, c.id) for c in diff(builtin("cn"), cn).changes}
    assert ("removed", "memberships", "cn.class.important.adas_training_data") in changes
    assert ("added", "rules", "cn.acme.no_faces_to_partners") in changes
    assert ("changed", "rulebook", "header") in changes
    assert ("changed", "rules", "cn.cbdf.pi_under_100k") in changes


@pytest.mark.parametrize(
    ("text", "needle", "words"),
    [
        (RELAXED_CN.replace("extends: cn", "extends: jp"), "extends", "built-in rulebook"),
        (RELAXED_CN.replace('version: "2026.1-acme"\n', ""), "extends", "its own 'version'"),
        (RELAXED_CN.replace("adas_training_data]", "adas_trainin]"), "remove", "cannot remove"),
        (RELAXED_CN.replace("outcome: prohibited", "outcome: banned"), "banned", "banned"),
        (
            RELAXED_CN.replace("[non_sensitive_pi]", "[nonsensitive_pi]"),
            "nonsensitive_pi",
            "unknown legal class",
        ),
    ],
)
def test_errors_in_an_extending_file_point_into_it(text: str, needle: str, words: str) -> None:
    with pytest.raises(RulebookError) as caught:
        load_text(text, "acme.yaml")
    assert caught.value.message.startswith(f"acme.yaml:{line_of(text, needle)}:")
    assert words in caught.value.message


def test_a_whole_file_override_and_an_extra_jurisdiction(tmp_path: Path) -> None:
    cn_copy = tmp_path / "cn.yaml"
    cn_copy.write_text(_builtin_text("cn").replace('version: "2026.1"', 'version: "2026.2"'))
    extra = tmp_path / "xx.yaml"
    extra.write_text(MINI)
    books = load_rulebooks({"cn": cn_copy}, [extra])
    assert books.versions == {"cn": "2026.2", "eu": "2026.1", "us": "2026.1", "xx": "1"}
    assert books.for_origin("XX").key == "xx"
    changes = diff(builtin("cn"), books["cn"]).changes
    assert [(c.section, c.id, [f.field for f in c.fields]) for c in changes] == [
        ("rulebook", "header", ["version"])
    ]


def test_clashes_between_rulebooks(tmp_path: Path) -> None:
    extra = tmp_path / "xx.yaml"
    extra.write_text(MINI.replace("jurisdiction: XX", "jurisdiction: CN"))
    with pytest.raises(RulebookError, match="second rulebook for jurisdiction CN"):
        load_rulebooks({}, [extra])
    extra.write_text(MINI.replace("territory: [XX]", "territory: [XX, DE]"))
    with pytest.raises(RulebookError, match="territory DE is already governed by the eu"):
        load_rulebooks({}, [extra])
    extra.write_text(MINI.replace("xx.rest:", "us.no_general_restriction:"))
    with pytest.raises(RulebookError, match=r"xx\.yaml:\d+: id 'us.no_general_restriction'"):
        load_rulebooks({}, [extra])
    with pytest.raises(RulebookNotFound, match="'jp'"):
        load_rulebooks({"jp": extra})
    extra.write_text(MINI)
    with pytest.raises(RulebookError, match="jurisdiction is XX"):
        load_rulebooks({"cn": extra})
    with pytest.raises(RulebookNotFound):
        load_file(tmp_path / "missing.yaml")


def test_evaluation_with_a_user_rulebook_conflicting_requirements() -> None:
    text = MINI.replace(
        "  xx.rest:",
        """  xx.trajectories:
    summary: Trajectories need binding corporate rules.
    applies_to: {categories: [trajectory]}
    outcome: require
    mechanisms: [eu_bcr]
    source: test act s. 5
    confidence: checked
  xx.rest:""",
    ).replace(
        "mechanisms:\n  eu_scc:",
        "mechanisms:\n  eu_bcr:\n    name: bcr\n    source: s\n    confidence: checked\n  eu_scc:",
    )
    from onshore.rulebook import Rulebooks

    books = Rulebooks([load_text(text, "x.yaml")])
    req = TransferRequest.model_validate(
        {
            "origin": "XX",
            "destination": "US",
            "recipient": {"name": "R", "country": "US"},
            "purpose": "p",
            "date": "2026-06-15",
            "data": [{"category": "trajectory", "subjects": 50}],
        }
    )
    ev = evaluate(req, books)
    assert ev.outcome == "require" and ev.mechanisms == ()
    assert [r.any_of for r in ev.requirements] == [("eu_scc",), ("eu_bcr",)]
    assert "No single mechanism satisfies every rule" in ev.reasons[0]


# -- diff ----------------------------------------------------------------------------------------


def test_diff_reports_rule_changes_field_by_field() -> None:
    old = load_text(MINI, "old.yaml")
    new_text = (
        MINI.replace('version: "1"', 'version: "2"')
        .replace('[">= 10"]', '[">= 20"]')
        .replace("confidence: unchecked", "confidence: checked")
        .replace(
            "  xx.rest:",
            "  xx.new:\n    summary: New.\n    outcome: prohibited\n"
            "    source: s\n    confidence: checked\n  xx.rest:",
        )
        .replace("[vehicle_id, trajectory]", "[vehicle_id]")
    )
    result = diff(old, load_text(new_text, "new.yaml"))
    by_id = {c.id: c for c in result.changes}
    assert by_id["header"].fields[0].as_dict() == {"field": "version", "before": "1", "after": "2"}
    when = by_id["xx.personal"].fields[0]
    assert (when.field, when.before, when.after) == ("count.when", [">= 10"], [">= 20"])
    assert [(f.field, f.before, f.after) for f in by_id["xx.rest"].fields] == [
        ("confidence", "unchecked", "checked")
    ]
    assert by_id["xx.new"].kind == "added" and by_id["xx.new"].confidence == "checked"
    assert [(f.field, f.after) for f in by_id["xx.m.ids"].fields] == [
        ("categories", ["vehicle_id"])
    ]
    assert result.as_dict()["summary"] == {"added": 1, "removed": 0, "changed": 4}
    assert "~ rules xx.personal" in str(by_id["xx.personal"])
    assert diff(old, old).same


def test_check_text_returns_the_book_and_warnings() -> None:
    book, problems = check_text(MINI, "m.yaml")
    assert book is not None and all(p.severity == "warning" for p in problems)


def test_alias_bombs_are_refused() -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    report = lint_text("\n".join(lines), "bomb.yaml")
    assert not report.ok and "aliases" in report.errors[0].message


def test_a_project_uses_the_rulebooks_its_settings_name(tmp_path: Path) -> None:
    from onshore.rulebook.loader import project_rulebooks
    from onshore.settings import load_project

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "cn.yaml").write_text(RELAXED_CN)
    (tmp_path / "rules" / "xx.yaml").write_text(MINI)
    (tmp_path / "onshore.toml").write_text(
        '[rulebooks]\nextra = ["rules/xx.yaml"]\n[rulebooks.overrides]\ncn = "rules/cn.yaml"\n'
    )
    books = project_rulebooks(load_project(tmp_path))
    assert books.versions == {"cn": "2026.1-acme", "eu": "2026.1", "us": "2026.1", "xx": "1"}
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "onshore.toml").write_text("")
    assert project_rulebooks(load_project(tmp_path / "bare")).versions["cn"] == "2026.1"


def test_the_format_example_in_the_docs_loads() -> None:
    import textwrap

    import onshore.rulebook.model as model

    assert model.__doc__ is not None
    example = model.__doc__.split("::\n\n", 1)[1].split("\n\nA user", 1)[0]
    book = load_text(textwrap.dedent(example), "model.__doc__")
    assert list(book.rules) == ["cn.cbdf.sensitive_10k_or_more"]


def test_a_site_may_have_the_jurisdiction_of_a_project_s_own_rulebook(tmp_path: Path) -> None:
    """The jurisdictions a site may have come from the rulebooks in force: a site under
    Testland's law (a rulebook of the project's own) loads; one under a law no rulebook
    governs is refused naming the site."""
    from onshore.errors import ConfigError
    from onshore.rulebook.loader import project_rulebooks
    from onshore.settings import load_project

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "xx.yaml").write_text(MINI)
    site = '[sites.xx-one]\njurisdiction = "XX"\nentity = "Testland Data Ltd"\ncountry = "XX"\n'
    (tmp_path / "onshore.toml").write_text(f'[rulebooks]\nextra = ["rules/xx.yaml"]\n{site}')
    project = load_project(tmp_path)
    books = project_rulebooks(project)
    assert books.for_origin(project.site("xx-one").jurisdiction).territory_set == {"XX"}
    with pytest.raises(ConfigError, match=r"\[sites.xx-one.fleet\]"):
        _ = project.site("xx-one").region_profile

    (tmp_path / "onshore.toml").write_text(site.replace('"XX"', '"YY"', 1))
    with pytest.raises(ConfigError, match=r"\[sites.xx-one\] jurisdiction YY") as raised:
        project_rulebooks(load_project(tmp_path))
    assert "[rulebooks] extra" in str(raised.value)
