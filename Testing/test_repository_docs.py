"""The repository's documents are its own: every `docs/*.md` that a .py or .md file cites exists,
every cited section of docs/methods.md exists and is about the method the citing text names, and
no file cites a document outside the repository (a fresh clone would have a dead link).

Tests that read data from ../shared/data are fine: only citations of documents count.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_DIRS = {"__pycache__", "build", "demo-output", "work-tmp", "node_modules"}
METHODS = ("M2ANet", "MA-MTLN", "SD-MdaNet", "MT-IDS", "LA-Net")

DOC_CITATION = re.compile(r"(?<![\w./-])docs/[\w./-]*?\.md\b")
# "docs/methods.md, section 2", "docs/methods.md section 4", "docs/methods.md §3"
SECTION_CITATION = re.compile(r"(?<![\w./-])(docs/[\w./-]*?\.md),?\s*(?:section|§)\s*(\d+)")
# a document under a shared/ folder beside the repository, or that folder's docs
OUTSIDE_DOCUMENT = re.compile(r"\bshared/(?:docs\b|[\w./-]*\.(?:md|rst|txt|pdf|html)\b)")
METHOD_NAME = re.compile("|".join(re.escape(m) for m in METHODS))


def _repository_files():
    """Every .py and .md file of the repository (hidden and build folders left out), but this test,
    which quotes citations as examples."""
    for path in sorted(ROOT.rglob("*")):
        if path == Path(__file__).resolve():
            continue
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        if path.suffix in (".py", ".md") and path.is_file():
            yield path


FILES = {path: path.read_text(encoding="utf-8") for path in _repository_files()}


def _where(path: Path, text: str, offset: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}"


def _numbered_sections(doc: Path) -> dict[int, str]:
    """{number: heading} of the document's '## N. Title' headings."""
    return {int(m.group(1)): m.group(2)
            for m in re.finditer(r"^## (\d+)\.\s*(.+)$", doc.read_text(encoding="utf-8"), re.M)}


def test_the_scan_sees_the_citing_files():
    # the scanner itself: it reads code and documents, and finds the citations known to be there
    names = {p.relative_to(ROOT).as_posix() for p in FILES}
    assert {"README.md", "LymphNodeMTL/LymphNodeMTLLib/network/components/soft_mask_pooling.py"} <= names
    assert not any(n.startswith((".git/", ".venv/")) for n in names)
    cited = {m.group(0) for text in FILES.values() for m in DOC_CITATION.finditer(text)}
    assert {"docs/methods.md", "docs/phantom-spec.md"} <= cited
    assert DOC_CITATION.findall("see shared/docs/x.md and docs/y.md.") == ["docs/y.md"]
    assert SECTION_CITATION.findall("(docs/methods.md, section 2)") == [("docs/methods.md", "2")]
    assert OUTSIDE_DOCUMENT.search("see shared/docs/methods.md") and OUTSIDE_DOCUMENT.search("../shared/notes.md")
    assert not OUTSIDE_DOCUMENT.search("reads the CT in ../shared/data/ct")


def test_every_cited_doc_exists():
    missing = [f"{_where(path, text, m.start())} cites {m.group(0)}"
               for path, text in FILES.items() for m in DOC_CITATION.finditer(text)
               if not (ROOT / m.group(0)).is_file()]
    assert not missing, "citations of documents that are not in the repository: " + "; ".join(missing)


def test_methods_document_numbers_the_five_methods_in_order():
    sections = _numbered_sections(ROOT / "docs" / "methods.md")
    assert sorted(sections) == [1, 2, 3, 4, 5]
    for number, method in enumerate(METHODS, start=1):
        assert sections[number].startswith(method), f"section {number} should be {method}: {sections[number]!r}"


def test_every_cited_section_exists_and_is_about_the_method_named():
    wrong = []
    for path, text in FILES.items():
        for m in SECTION_CITATION.finditer(text):
            doc, number = ROOT / m.group(1), int(m.group(2))
            where = _where(path, text, m.start())
            sections = _numbered_sections(doc) if doc.is_file() else {}
            if number not in sections:
                wrong.append(f"{where}: {m.group(1)} has no section {number}")
                continue
            # the method named last before the citation, on its line
            line_start = text.rfind("\n", 0, m.start()) + 1
            named = METHOD_NAME.findall(text[line_start:m.start()])
            if named and not sections[number].startswith(named[-1]):
                wrong.append(f"{where}: names {named[-1]} but cites section {number} ({sections[number]})")
    assert not wrong, "; ".join(wrong)


def test_no_file_cites_documents_outside_the_repository():
    outside = [f"{_where(path, text, m.start())}: {m.group(0)}"
               for path, text in FILES.items() for m in OUTSIDE_DOCUMENT.finditer(text)]
    assert not outside, ("citations of documents outside the repository (cite the copy in docs/): "
                         + "; ".join(outside))
