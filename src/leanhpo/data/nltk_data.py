"""Set up the NLTK corpora that the offline augmentation needs, without the NLTK download host.

    python -m leanhpo.data.nltk_data [--dest DIR] [--no-download] [--verify]

TextAttack's offline augmenters need two corpora: WordNet (synonym swap and insertion) and the
English stopwords (`import textattack` builds a stopword constraint at import time). The
taggers and tokenisers that TextAttack asks `nltk.download` for on first import are not used
by these augmenters, so they are not required.

Each corpus is obtained by the first route that works:
1. already in DIR: nothing to do (checked by file presence only, so a no-op never imports NLTK);
2. `nltk.download`, with a short socket timeout so an unreachable host fails in seconds;
3. Debian packages, unpacked with `apt-get download` + `dpkg-deb -x` (no system-wide install):
   - WordNet 3.0 from `wordnet-base` and `wordnet-sense-index`. NLTK's reader also needs a
     `lexnames` file, which Debian does not ship; it is generated from the package's
     lexnames(5WN) man page, which lists the same table.
   - English stopwords from `liblingua-stopwords-perl` (Lingua::StopWords::EN, the Snowball
     project's English stop list, from which NLTK's own list was derived).
Each corpus is built in a temporary folder and renamed into place, so an interrupted run never
leaves a half corpus that looks present. A run that built anything ends by checking, in a fresh
process with NLTK_DATA=DIR, that WordNet answers and that `import textattack` succeeds.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from leanhpo.commands import executable

DEFAULT_FOLDER = ".nltk_data"
# NLTK resource name -> folder under DIR (NLTK also accepts the same path with ".zip").
RESOURCES: dict[str, str] = {"wordnet": "corpora/wordnet", "stopwords": "corpora/stopwords"}
# The files NLTK's WordNetCorpusReader opens (its `_FILES`).
WORDNET_FILES: tuple[str, ...] = (
    "cntlist.rev",
    "lexnames",
    "index.sense",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
)
STOPWORDS_FILE = "english"
DEBIAN_PACKAGES: dict[str, tuple[str, ...]] = {
    "wordnet": ("wordnet-base", "wordnet-sense-index"),
    "stopwords": ("liblingua-stopwords-perl",),
}
DEBIAN_WORDNET_DIR = "usr/share/wordnet"
DEBIAN_LEXNAMES_MAN = "usr/share/man/man5/lexnames.5WN.gz"
DEBIAN_WORDNET_COPYRIGHT = "usr/share/doc/wordnet-base/copyright"
DEBIAN_STOPWORDS_MODULE = "usr/share/perl5/Lingua/StopWords/EN.pm"
# lexnames(5WN): "1 NOUN, 2 VERB, 3 ADJECTIVE, 4 ADVERB", keyed by the file name's prefix.
LEXNAME_CATEGORIES = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
LEXNAME_ROW = re.compile(r"^(\d{2})\t\s*([a-z]+\.[A-Za-z]+)\s*\t")
PERL_WORD_LIST = re.compile(r"sub _stopwords\s*\{\s*return qw\((.*?)\);", re.DOTALL)
DOWNLOAD_TIMEOUT_S = 10
APT_TIMEOUT_S = 300
VERIFY_TIMEOUT_S = 600
VERIFY_CODE = """
from nltk.corpus import stopwords, wordnet
assert wordnet.synsets("sad"), "WordNet gave no synsets for 'sad'"
assert "the" in stopwords.words("english"), "the English stopword list lacks 'the'"
from leanhpo.data.augment import load_textattack
load_textattack()
print("wordnet, stopwords and textattack ok")
"""


class NltkDataError(RuntimeError):
    """The corpora could not be set up; the message says what was tried and how to fix it."""


def default_dest() -> Path:
    """`<repo>/.nltk_data` for a source checkout, else `./.nltk_data`."""
    repo = Path(__file__).resolve().parents[3]
    base = repo if (repo / "pyproject.toml").is_file() else Path.cwd()
    return base / DEFAULT_FOLDER


def missing_resources(dest: Path) -> list[str]:
    """The required resources that DIR lacks (file checks only, so this stays fast)."""
    missing = []
    for name, folder in RESOURCES.items():
        if (dest / f"{folder}.zip").is_file():
            continue
        needed = WORDNET_FILES if name == "wordnet" else (STOPWORDS_FILE,)
        if not all((dest / folder / file).is_file() for file in needed):
            missing.append(name)
    return missing


def ensure_nltk_data(dest: Path, *, try_download: bool = True) -> dict[str, str]:
    """Make every required resource present in `dest`; return how each one was obtained."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    routes = dict.fromkeys(RESOURCES, "present")
    missing = missing_resources(dest)
    if missing and try_download:
        _try_nltk_download(missing, dest)
        still = missing_resources(dest)
        routes.update({name: "nltk.download" for name in missing if name not in still})
        missing = still
    for name in missing:
        _install_from_debian(name, dest)
        routes[name] = "debian:" + "+".join(DEBIAN_PACKAGES[name])
    return routes


def _try_nltk_download(names: list[str], dest: Path) -> None:
    import nltk

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        for name in names:
            errors = io.StringIO()
            ok = nltk.download(name, download_dir=str(dest), quiet=True, print_error_to=errors)
            if not ok:
                reason = " ".join(errors.getvalue().replace("[nltk_data]", " ").split())
                _say(f"nltk.download({name!r}) failed ({reason[:160]}); trying Debian packages")
    finally:
        socket.setdefaulttimeout(previous)


def _install_from_debian(name: str, dest: Path) -> None:
    target = dest / RESOURCES[name]
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=dest) as work:
        root = _unpack_debian(DEBIAN_PACKAGES[name], Path(work))
        staging = Path(work) / "staging"
        staging.mkdir()
        if name == "wordnet":
            _build_wordnet(root, staging)
        else:
            _build_stopwords(root, staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)  # an incomplete corpus from an older run
        os.replace(staging, target)
    _say(f"{name}: built {target} from Debian packages {', '.join(DEBIAN_PACKAGES[name])}")


def _unpack_debian(packages: tuple[str, ...], work: Path) -> Path:
    """`apt-get download` the packages into `work` and extract them under `work/root`."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise NltkDataError(
                f"The NLTK download host is unreachable and `{tool}` is not available for the "
                f"Debian fallback (packages {', '.join(packages)}). Fix: on a machine with "
                "network access run `python -m nltk.downloader -d DIR wordnet stopwords` and "
                "copy DIR here, then point NLTK_DATA at it."
            )
    command = ["apt-get", "download", "-o", "Acquire::http::Timeout=20", *packages]
    result = _run(command, work)
    if result.returncode != 0:
        raise NltkDataError(
            f"`{' '.join(command)}` failed (exit {result.returncode}): "
            f"{_tail(result.stderr or result.stdout)}. Fix: check that a Debian mirror is "
            "reachable and that the package lists are current (`apt-get update`)."
        )
    root = work / "root"
    for deb in sorted(work.glob("*.deb")):
        extracted = _run(["dpkg-deb", "-x", str(deb), str(root)], work)
        if extracted.returncode != 0:
            raise NltkDataError(f"`dpkg-deb -x {deb.name}` failed: {_tail(extracted.stderr)}")
    return root


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise NltkDataError(
            f"`{' '.join(command)}` did not finish within {APT_TIMEOUT_S} s. Fix: check the "
            "network path to the Debian mirror, then run again."
        ) from error


def _build_wordnet(root: Path, out: Path) -> None:
    """Lay the Debian WordNet files out as NLTK's `corpora/wordnet` reader expects."""
    source = root / DEBIAN_WORDNET_DIR
    for file in WORDNET_FILES:
        if file == "lexnames":
            continue
        if not (source / file).is_file():
            raise NltkDataError(f"The Debian WordNet packages lack {DEBIAN_WORDNET_DIR}/{file}.")
        shutil.copyfile(source / file, out / file)
    man_page = root / DEBIAN_LEXNAMES_MAN
    if not man_page.is_file():
        raise NltkDataError(f"wordnet-base lacks the man page {DEBIAN_LEXNAMES_MAN}.")
    text = gzip.decompress(man_page.read_bytes()).decode("utf-8", errors="replace")
    (out / "lexnames").write_text(lexnames_from_man(text), encoding="utf-8")
    copyright_file = root / DEBIAN_WORDNET_COPYRIGHT
    if copyright_file.is_file():  # WordNet's licence asks for the notice on all copies
        shutil.copyfile(copyright_file, out / "LICENSE")


def lexnames_from_man(man_text: str) -> str:
    """NLTK's `lexnames` ("NN<TAB>name<TAB>category" per line) from the lexnames(5WN) table."""
    lines: list[str] = []
    for line in man_text.splitlines():
        match = LEXNAME_ROW.match(line)
        if not match:
            continue
        number, name = match.groups()
        if int(number) != len(lines):
            raise NltkDataError(
                f"lexnames(5WN): expected file number {len(lines):02d}, found {number} ({name})"
            )
        category = LEXNAME_CATEGORIES.get(name.split(".")[0])
        if category is None:
            raise NltkDataError(f"lexnames(5WN): unknown syntactic category in {name!r}")
        lines.append(f"{number}\t{name}\t{category}\n")
    if not lines:
        raise NltkDataError("lexnames(5WN): no lexicographer file table found in the man page")
    return "".join(lines)


def _build_stopwords(root: Path, out: Path) -> None:
    module = root / DEBIAN_STOPWORDS_MODULE
    if not module.is_file():
        raise NltkDataError(f"liblingua-stopwords-perl lacks {DEBIAN_STOPWORDS_MODULE}.")
    words = stopwords_from_perl(module.read_text(encoding="utf-8"))
    (out / STOPWORDS_FILE).write_text("".join(f"{word}\n" for word in words), encoding="utf-8")
    (out / "README").write_text(
        "English stop list of the Snowball project, taken from Debian's "
        "liblingua-stopwords-perl (Lingua::StopWords::EN) by leanhpo.data.nltk_data.\n",
        encoding="utf-8",
    )


def stopwords_from_perl(module_text: str) -> list[str]:
    """The word list of a Lingua::StopWords language module (its `qw(...)` block)."""
    match = PERL_WORD_LIST.search(module_text)
    if not match or not match.group(1).split():
        raise NltkDataError("Lingua::StopWords::EN: no `return qw(...)` word list found")
    return list(dict.fromkeys(match.group(1).split()))


def verify(dest: Path) -> None:
    """Check in a fresh process (NLTK reads NLTK_DATA at import) that the corpora work."""
    env = {**os.environ, "NLTK_DATA": str(dest)}
    try:
        result = subprocess.run(
            [sys.executable, "-c", VERIFY_CODE],
            env=env,
            capture_output=True,
            text=True,
            timeout=VERIFY_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise NltkDataError(
            f"Checking the NLTK data did not finish in {VERIFY_TIMEOUT_S} s"
        ) from error
    if result.returncode != 0:
        raise NltkDataError(
            f"The NLTK data in {dest} does not work: {_tail(result.stderr or result.stdout)}. "
            f"Fix: delete {dest} and run `{executable('python')} -m leanhpo.data.nltk_data "
            f"--dest {dest}` again (or `make nltk-data`)."
        )


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "no output"


def _say(message: str) -> None:
    print(f"nltk-data: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leanhpo.data.nltk_data", description=__doc__)
    parser.add_argument("--dest", type=Path, default=None, help="target folder (NLTK_DATA)")
    parser.add_argument("--no-download", action="store_true", help="skip nltk.download")
    parser.add_argument("--verify", action="store_true", help="check even if nothing was built")
    args = parser.parse_args(argv)
    dest = (args.dest or default_dest()).resolve()
    try:
        routes = ensure_nltk_data(dest, try_download=not args.no_download)
        built = any(route != "present" for route in routes.values())
        if built or args.verify:
            verify(dest)
    except NltkDataError as error:
        _say(f"error: {error}")
        return 1
    summary = ", ".join(f"{name} ({route})" for name, route in routes.items())
    _say(f"{dest}: {summary}{'; verified' if built or args.verify else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
