"""Knowledge-base documents become cited passages; the starter knowledge base cites every entry."""

import pytest

from indexer.knowledge import knowledge_chunks
from indexer.knowledge_files import STARTER, document_text, files_under

DOC = """# Example guideline
Source: Example Society. Example guideline. 2020.

Intro text.

## Section A
Alpha content: 5 or more.

## Section B
Source: Other Society. Other paper. 2019.
Beta content.
"""


def test_sections_keep_title_section_and_citation():
    chunks = knowledge_chunks(DOC, source="example.md")
    assert [(c.section, c.citation) for c in chunks] == [
        ("", "Example Society. Example guideline. 2020."),
        ("Section A", "Example Society. Example guideline. 2020."),
        ("Section B", "Other Society. Other paper. 2019."),
    ]
    assert chunks[1].text == "Example guideline - Section A: Alpha content: 5 or more."
    assert all("Source:" not in c.text for c in chunks)
    assert [c.id for c in chunks] == [c.id for c in knowledge_chunks(DOC, source="example.md")]
    assert chunks[0].id != knowledge_chunks(DOC, source="other.md")[0].id


def test_a_document_without_a_citation_is_refused():
    with pytest.raises(ValueError, match="Source"):
        knowledge_chunks("# Title\n\nuncited text\n", source="x.md")
    assert knowledge_chunks("  \n", source="empty.md") == []


def test_starter_knowledge_base_covers_the_named_topics_and_cites_every_passage():
    files = files_under([STARTER])
    assert {p.name for p in files} >= {
        "news2.md",
        "sepsis-3.md",
        "kdigo-aki.md",
        "critical-values.md",
        "drug-interactions.md",
    }
    passages = [c for p in files for c in knowledge_chunks(document_text(p), source=p.name)]
    assert len(passages) >= 30
    assert all(len(c.citation) > 20 for c in passages)
    text = " ".join(c.text for c in passages)
    for fact in ("qSOFA", "0.3 mg/dL", "SpO2 scale 2", "clarithromycin", "6.0 mmol/L"):
        assert fact in text


def test_unreadable_files_are_refused_with_a_reason(tmp_path):
    (tmp_path / "x.docx").write_bytes(b"PK")
    with pytest.raises(ValueError, match="only"):
        document_text(tmp_path / "x.docx")
    (tmp_path / "bad.pdf").write_bytes(b"not a pdf")
    with pytest.raises(ValueError, match="PDF"):
        document_text(tmp_path / "bad.pdf")
