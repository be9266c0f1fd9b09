"""Offline NLTK corpora: the Debian fallback lays files out as NLTK reads them; a rerun is a no-op.

Nothing here reaches a network: the Debian download is replaced by a fake unpacked package
tree. The real corpora (from `make nltk-data`) are checked where present.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leanhpo.data import nltk_data
from leanhpo.data.nltk_data import (
    DEBIAN_LEXNAMES_MAN,
    DEBIAN_STOPWORDS_MODULE,
    DEBIAN_WORDNET_COPYRIGHT,
    DEBIAN_WORDNET_DIR,
    WORDNET_FILES,
    NltkDataError,
    ensure_nltk_data,
    lexnames_from_man,
    main,
    missing_resources,
    stopwords_from_perl,
)

REAL_DIR = Path(os.environ.get("NLTK_DATA", str(nltk_data.default_dest())).split(os.pathsep)[0])
needs_real_data = pytest.mark.skipif(
    bool(missing_resources(REAL_DIR)), reason=f"no NLTK corpora in {REAL_DIR}: run `make nltk-data`"
)

# The table of lexnames(5WN) as Debian ships it (trailing blanks included), shortened.
MAN_PAGE = """.TH LEXNAMES 5WN "Dec 2006" "WordNet 3.0"
.SS Syntactic Category
\\fB1\\fP\tNOUN
.TS
\\fBFile Number\\fP\t\\fBName\\fP\t\\fBContents\\fP
_
00\tadj.all\tall adjective clusters
01\tadj.pert\trelational adjectives (pertainyms)
02\tadv.all\tall adverbs
03\tnoun.Tops\tunique beginner for nouns
04\tnoun.person  \tnouns denoting people
05\tverb.body\tverbs of grooming, dressing and bodily care\x20\x20
.TE
"""
EXPECTED_LEXNAMES = (
    "00\tadj.all\t3\n01\tadj.pert\t3\n02\tadv.all\t4\n"
    "03\tnoun.Tops\t1\n04\tnoun.person\t1\n05\tverb.body\t2\n"
)
PERL_MODULE = """package Lingua::StopWords::EN;
sub getStopWords { return 1; }
sub _stopwords {
    return qw(
            i me my myself we
            i'm you're a the and
            the
    );
}
1;
"""


def test_lexnames_are_generated_from_the_man_page() -> None:
    assert lexnames_from_man(MAN_PAGE) == EXPECTED_LEXNAMES


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["noun", "verb", "adj", "adv"]),
            st.text("abcdefghijklmnopqrstuvwxyzABC", min_size=1, max_size=12),
            st.text(" ", max_size=2),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_any_lexnames_table_round_trips(rows: list[tuple[str, str, str]]) -> None:
    table = "".join(
        f"{i:02d}\t{kind}.{name}{pad}\tdescription\n" for i, (kind, name, pad) in enumerate(rows)
    )
    categories = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
    expected = "".join(
        f"{i:02d}\t{kind}.{name}\t{categories[kind]}\n" for i, (kind, name, _) in enumerate(rows)
    )
    assert lexnames_from_man(".TS\n" + table + ".TE\n") == expected


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("no table here\n", "no lexicographer file table"),
        ("00\tadj.all\tx\n02\tadv.all\tx\n", "expected file number 01"),
        ("00\tsatellite.all\tx\n", "unknown syntactic category"),
    ],
)
def test_a_broken_man_page_is_an_error(page: str, message: str) -> None:
    with pytest.raises(NltkDataError, match=message):
        lexnames_from_man(page)


def test_stopwords_are_read_from_the_perl_module() -> None:
    assert stopwords_from_perl(PERL_MODULE) == [
        "i", "me", "my", "myself", "we", "i'm", "you're", "a", "the", "and",
    ]  # fmt: skip
    with pytest.raises(NltkDataError, match="no `return qw"):
        stopwords_from_perl("package Lingua::StopWords::EN;\n1;\n")


def fake_debian_tree(root: Path) -> Path:
    """What `dpkg-deb -x` of the three packages leaves behind (tiny file contents)."""
    wordnet = root / DEBIAN_WORDNET_DIR
    wordnet.mkdir(parents=True)
    for name in WORDNET_FILES:
        if name != "lexnames":
            (wordnet / name).write_text(f"{name}\n")
    (wordnet / "sents.vrb").write_text("not needed by NLTK\n")
    for path, data in (
        (DEBIAN_LEXNAMES_MAN, gzip.compress(MAN_PAGE.encode())),
        (DEBIAN_WORDNET_COPYRIGHT, b"WordNet 3.0 Copyright 2006 by Princeton University.\n"),
        (DEBIAN_STOPWORDS_MODULE, PERL_MODULE.encode()),
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def test_debian_fallback_lays_out_both_corpora(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = fake_debian_tree(tmp_path / "tree")
    fetched: list[tuple[str, ...]] = []

    def unpack(packages: tuple[str, ...], work: Path) -> Path:
        fetched.append(packages)
        return tree

    monkeypatch.setattr(nltk_data, "_unpack_debian", unpack)
    dest = tmp_path / "nltk"
    assert missing_resources(dest) == ["wordnet", "stopwords"]
    routes = ensure_nltk_data(dest, try_download=False)
    assert routes == {
        "wordnet": "debian:wordnet-base+wordnet-sense-index",
        "stopwords": "debian:liblingua-stopwords-perl",
    }
    assert fetched == [("wordnet-base", "wordnet-sense-index"), ("liblingua-stopwords-perl",)]
    assert missing_resources(dest) == []
    corpus = dest / "corpora" / "wordnet"
    assert sorted(p.name for p in corpus.iterdir()) == sorted([*WORDNET_FILES, "LICENSE"])
    assert (corpus / "lexnames").read_text() == EXPECTED_LEXNAMES
    assert (dest / "corpora/stopwords/english").read_text().split("\n")[:3] == ["i", "me", "my"]
    assert [p.name for p in dest.iterdir()] == ["corpora"]  # no temporary folders left behind


def test_present_corpora_are_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = fake_debian_tree(tmp_path / "tree")
    monkeypatch.setattr(nltk_data, "_unpack_debian", lambda *args: tree)
    ensure_nltk_data(tmp_path / "nltk", try_download=False)

    def forbidden(*args: object) -> None:
        raise AssertionError("a present corpus must not be fetched again")

    monkeypatch.setattr(nltk_data, "_try_nltk_download", forbidden)
    monkeypatch.setattr(nltk_data, "_install_from_debian", forbidden)
    assert ensure_nltk_data(tmp_path / "nltk") == {"wordnet": "present", "stopwords": "present"}
    assert main(["--dest", str(tmp_path / "nltk")]) == 0


def test_an_incomplete_corpus_counts_as_missing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpora" / "wordnet"
    corpus.mkdir(parents=True)
    for name in WORDNET_FILES[:-1]:
        (corpus / name).write_text("x")
    (tmp_path / "corpora" / "stopwords.zip").write_bytes(b"zip")  # NLTK reads zips as well
    assert missing_resources(tmp_path) == ["wordnet"]


def test_no_route_left_exits_non_zero_with_a_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(nltk_data.shutil, "which", lambda tool: None)
    assert main(["--dest", str(tmp_path), "--no-download"]) == 1
    error = capsys.readouterr().err
    assert "apt-get" in error and "python -m nltk.downloader -d DIR wordnet stopwords" in error


def test_verify_rejects_corpora_that_do_not_load(tmp_path: Path) -> None:
    with pytest.raises(NltkDataError, match="does not work"):
        nltk_data.verify(tmp_path)


@needs_real_data
def test_prepared_corpora_work_with_nltk() -> None:
    from nltk.corpus import stopwords, wordnet

    assert "sad.a.01" in [synset.name() for synset in wordnet.synsets("sad")]
    assert wordnet.synset("dog.n.01").lexname() == "noun.animal"  # lexnames line up
    assert {"the", "not", "myself"} <= set(stopwords.words("english"))
