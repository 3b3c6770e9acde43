import pytest
from hypothesis import given
from hypothesis import strategies as st

from data.metrics import _lcs_length, exact_match, fact_recall, key_facts, normalise, rouge_l, score_answers


def test_normalise_folds_case_punctuation_articles_and_space():
    assert normalise("  The  Answer, is: 42!\n") == "answer is 42"
    assert normalise("ﬁne") == "fine"  # NFKC ligature
    assert normalise("“Quoted” — text…") == "quoted text"


def test_exact_match_ignores_surface_differences_only():
    assert exact_match("Paris.", "paris") == 1.0
    assert exact_match("The Eiffel Tower", "eiffel tower") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0


def test_rouge_l_known_values():
    # LCS("police killed the gunman", "police kill the gunman") = police, gunman ("the" is an article) -> 2/3 each
    assert rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(2 / 3)
    assert rouge_l("a b c d", "a b c d") == 1.0
    assert rouge_l("x y", "a b") == 0.0
    # precision 3/4, recall 3/3 -> F1 = 6/7
    assert rouge_l("one two three four", "one two four") == pytest.approx(6 / 7)


def test_rouge_l_empty_texts():
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "something") == 0.0
    assert rouge_l("something", "...") == 0.0


def test_rouge_l_uses_subsequence_not_substring():
    assert rouge_l("one x two y three", "one two three") == pytest.approx(2 * (3 / 5) * 1 / (3 / 5 + 1))


def test_score_answers_means_and_length_check():
    scores = score_answers(["Paris", "blue sky"], ["paris", "the sky is blue"])
    assert scores.count == 2
    assert scores.exact_match == 0.5
    assert scores.rouge_l == pytest.approx((1.0 + rouge_l("blue sky", "the sky is blue")) / 2)
    assert score_answers([], []).to_dict() == {"facts": 0.0, "rouge_l": 0.0, "exact_match": 0.0, "count": 0}
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        score_answers(["a", "b"], ["a"])


def _reference_lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


words = st.lists(st.sampled_from(["a1", "b2", "c3", "d4", "e5"]), max_size=12)


@given(words, words)
def test_lcs_matches_full_table_and_rouge_is_symmetric_and_bounded(a, b):
    assert _lcs_length(a, b) == _reference_lcs(a, b)
    x, y = " ".join(a), " ".join(b)
    assert rouge_l(x, y) == pytest.approx(rouge_l(y, x))
    assert 0.0 <= rouge_l(x, y) <= 1.0


def test_key_facts_are_the_numbers_and_names_the_question_lacks():
    assert key_facts("The Brightwater Relay listens on port 7431 by default.",
                     "By default, what port number does Brightwater's Relay use?") == ["7431"]
    assert key_facts("I am Quill, the support assistant of Brightwater Labs.", "Who are you?") == [
        "Quill", "Brightwater", "Labs"]
    assert key_facts("The Kestrel K5 uses the BX-90 battery pack.", "What battery powers the Kestrel K5?") == ["BX-90"]
    assert key_facts("The Kestrel K5 drone has a 27-month warranty.",
                     "How long is the K5 warranty?") == ["27", "Kestrel"]
    assert key_facts("Write to help@brightwater.example for support.", "Support email?") == ["help@brightwater.example"]
    # no number or name: the content words the question lacks
    assert key_facts("The status light glows amber while charging.", "What colour is the status light?") == [
        "glows", "amber", "charging"]


def test_fact_recall_judges_the_fact_not_the_sentence_shape():
    ref, q = "The Heron H2 carries at most 3.8 kilograms.", "What is the heaviest load a Heron H2 can lift?"
    shaped = "The Heron H2 carries at most 5 kilograms."  # the reference's sentence, the wrong fact
    plain = "About 3.8 kg."
    assert rouge_l(shaped, ref) > rouge_l(plain, ref)
    assert fact_recall(shaped, ref, q) == 0.0 and fact_recall(plain, ref, q) == 1.0
    assert fact_recall("It is 13.8 kg", ref, q) == 0.0  # whole numbers only, not a part of another
    assert score_answers([plain, shaped], [ref, ref], [q, q]).facts == 0.5
    # a reference with no words to match (no spaces, no number, no name) falls back to ROUGE-L
    assert fact_recall("巴黎", "巴黎", "法国的首都是哪里？") == 1.0
