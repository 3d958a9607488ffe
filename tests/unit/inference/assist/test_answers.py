"""Cited answers: the problem-oriented summary, every sentence cited, invented facts removed."""

from inference.assist.answers import answer, summary, topics_of
from inference.assist.facts import facts
from kernel.generation import Generation
from kernel.grounding import Evidence
from tests.unit.inference.assist.fixtures import NOW, chart, condition, med, obs


class Scripted:
    """A chat model that answers with a fixed text (the unit under test is what happens next)."""

    name = "scripted"

    def __init__(self, text):
        self.text = text
        self.prompts = []

    def chat(self, messages, config):
        self.prompts.append(messages)
        return Generation(self.text, [1, 2, 3], 10, "eos", 0.01, 0.02)


KIDNEY = chart(
    obs("2160-0", 1.1, "2025-06-01"),
    obs("2160-0", 1.6, "2026-03-01"),
    obs("2160-0", 2.2, "2026-05-01"),
    condition("Chronic kidney disease stage 3 (disorder)", "433144002"),
    med("Lisinopril 10 MG Oral Tablet"),
    med("Ibuprofen 400 MG Oral Tablet"),
    med("Acetaminophen 500 MG"),
)


def test_a_question_about_a_problem_gets_a_problem_oriented_summary():
    assert [t.name for t in topics_of("Why is her creatinine rising?")] == ["kidney"]
    lines = summary(facts(KIDNEY, NOW), "Why is her creatinine rising?")
    texts = [line.text for line in lines]
    assert texts[0].startswith("Creatinine: 1.1 mg/dL on 2025-06-01; 1.6 mg/dL on 2026-03-01; 2.2 mg/dL")
    assert texts[0].endswith("rising.")
    assert len(lines[0].citations) == 3
    assert any("Chronic kidney disease" in t for t in texts)
    assert any("Lisinopril" in t for t in texts)
    assert any("Ibuprofen" in t for t in texts)
    assert not any("Acetaminophen" in t for t in texts)  # not a drug that acts on the kidney


def test_every_sentence_is_cited_and_an_invented_number_is_removed():
    model = Scripted(
        "Creatinine was 1.1 mg/dL on 2025-06-01 and 2.2 mg/dL on 2026-05-01, rising [E1]. "
        "Creatinine was 3.9 mg/dL in 2019 [E1]. "
        "Ibuprofen can reduce kidney function [E3]."
    )
    kb = [
        Evidence("kb:kdigo-aki.md#Definition", "Acute kidney injury is an increase in serum creatinine ...")
    ]
    found = answer("Why is her creatinine rising?", KIDNEY, facts(KIDNEY, NOW), [], kb, model)
    body = found.public()
    texts = [s["text"] for s in body["sentences"]]
    assert "Creatinine was 1.1 mg/dL on 2025-06-01 and 2.2 mg/dL on 2026-05-01, rising." in texts
    assert not any("3.9" in t for t in texts)  # no cited resource holds it
    assert body["guard"]["removed"] >= 1
    assert all(s["citations"] for s in body["sentences"])
    ids = {s["id"] for s in body["sources"]}
    assert all(c in ids for s in body["sentences"] for c in s["citations"])
    # the entries went to the model numbered, the knowledge passage among them
    prompt = model.prompts[0][1]["content"]
    assert "[E1] Creatinine:" in prompt
    assert "Acute kidney injury" in prompt


def test_nothing_to_answer_from_is_an_empty_answer():
    model = Scripted("She is fine.")
    empty = chart()
    found = answer("How is her thyroid?", empty, facts(empty, NOW), [], [], model)
    assert found.public()["sentences"] == []
    assert model.prompts == []


def test_uncited_prose_is_dropped_even_when_the_model_names_no_entry():
    model = Scripted("The patient has a rare genetic syndrome.")
    found = answer("Why is her creatinine rising?", KIDNEY, facts(KIDNEY, NOW), [], [], model)
    assert all("syndrome" not in s.text for s in found.sentences)
    assert found.sentences  # the summary still answers, cited
