"""The span helpers every method shares, against plain reference computations."""

from __future__ import annotations

import pytest

from workers.compression.text import (
    allocate,
    allocate_weighted,
    merge_spans,
    protected_words,
    query_keywords,
    render,
    sentence_spans,
    token_budget,
    word_spans,
)


def test_it_splits_sentences_into_spans_of_the_original_text():
    text = "Dr. Smith moved to the U.S. Army in 1950.  He left in 1961! Why?  J. R. R. Tolkien wrote it."
    spans = sentence_spans(text)
    pieces = [text[a:b] for a, b in spans]
    assert pieces == [
        "Dr. Smith moved to the U.S. Army in 1950.",
        "He left in 1961!",
        "Why?",
        "J. R. R. Tolkien wrote it.",
    ]
    # Nothing but whitespace lies between or around the sentences.
    cursor = 0
    for a, b in spans:
        assert not text[cursor:a].strip()
        cursor = b
    assert not text[cursor:].strip()


def test_it_treats_text_without_a_full_stop_as_one_sentence():
    assert sentence_spans("no full stop here") == [(0, 17)]
    assert sentence_spans("   ") == []


def test_it_renders_kept_spans_in_original_order_with_one_space_per_cut():
    text = "alpha beta  gamma delta epsilon"
    words = word_spans(text)
    assert [text[a:b] for a, b in words] == ["alpha", "beta", "gamma", "delta", "epsilon"]
    kept = [words[4], words[0], words[1]]
    assert render(text, kept) == "alpha beta epsilon"
    # Adjacent words merge into one span that keeps the original whitespace.
    assert merge_spans(text, [words[1], words[2]]) == [(6, 17)]


@pytest.mark.parametrize(
    ("budget", "sizes"), [(10, [3, 3, 4, 0]), (7, [100, 1, 1]), (0, [5, 5]), (50, [5, 5]), (13, [1, 2, 3, 4, 5])]
)
def test_it_allocates_the_budget_exactly_and_proportionally(budget, sizes):
    shares = allocate(budget, sizes)
    assert sum(shares) == min(budget, sum(sizes))
    assert all(0 <= s <= n for s, n in zip(shares, sizes, strict=True))
    for s, n in zip(shares, sizes, strict=True):
        # Largest remainder: every share is the exact proportion rounded down or up.
        exact = min(budget, sum(sizes)) * n / sum(sizes)
        assert int(exact) <= s <= int(exact) + 1


@pytest.mark.parametrize(("budget", "sizes"), [(10, [3, 3, 4, 0]), (13, [1, 2, 3, 4, 5]), (50, [5, 5])])
def test_it_allocates_with_equal_weights_like_the_plain_proportional_split(budget, sizes):
    assert allocate_weighted(budget, sizes, [1.0] * len(sizes)) == allocate(budget, sizes)


def test_it_caps_weighted_shares_at_each_items_size_and_passes_the_excess_on():
    shares = allocate_weighted(60, [50, 50, 50], [10.0, 1.0, 0.0])
    # The favourite would get 60 * 10/11 > 50: capped at its size, the other 10 go to the next.
    assert shares == [50, 10, 0]
    assert sum(allocate_weighted(37, [10, 20, 30, 40], [0.5, 2.0, 1.0, 0.1])) == 37
    assert allocate_weighted(500, [10, 20], [1.0, 0.0]) == [10, 0]  # zero weight never gets any


def test_it_reads_a_target_as_a_share_or_a_token_budget():
    assert token_budget(0.33, 1000) == 330
    assert token_budget(1.0, 1000) == 1000
    assert token_budget(250, 1000) == 250
    assert token_budget(5000, 1000) == 1000
    with pytest.raises(ValueError):
        token_budget(0, 1000)


def test_it_protects_numbers_named_entities_and_query_words():
    text = "The Lord of the Rings was written by Tolkien in 1954. It sold 150 million copies in the city."
    words = word_spans(text)
    flags = protected_words(text, words, query_keywords("How many copies were sold?"))
    kept = [text[a:b] for (a, b), flag in zip(words, flags, strict=True) if flag]
    # "million" is what 150 counts (the content word right after a number).
    assert kept == ["Lord", "of", "the", "Rings", "Tolkien", "1954.", "sold", "150", "million", "copies"]
    # Capitalised function words at a sentence start are not entities; query stopwords are not keywords.
    assert "The" not in kept and "It" not in kept and "many" not in query_keywords("How many")


def test_a_quoted_title_keeps_its_first_word_even_when_it_is_a_function_word():
    # NQ: "panic at the disco song about a wedding" -> "I Write Sins Not Tragedies"; pruning "I"
    # broke the answer. A quotation that opens a sentence with a capitalised word is a title.
    text = '"I Write Sins Not Tragedies" is a song. “The Raven” is a poem. The song was a hit.'
    words = word_spans(text)
    kept = [text[a:b] for (a, b), flag in zip(words, protected_words(text, words, set()), strict=True) if flag]
    assert kept == ['"I', "Write", "Sins", "Not", 'Tragedies"', "“The", "Raven”"]


def test_the_word_a_number_counts_is_protected_with_it_but_not_across_punctuation_or_function_words():
    # NQ #291: "the 15th century" lost "century", which the LM predicts after "15th".
    text = "It spread in the 15th century, by 1990, and 70 percent of 12 of them were sold."
    words = word_spans(text)
    kept = [text[a:b] for (a, b), flag in zip(words, protected_words(text, words, set()), strict=True) if flag]
    assert kept == ["15th", "century,", "1990,", "70", "percent", "12"]
    plain = protected_words(text, words, set(), counted=False)
    assert [text[a:b] for (a, b), flag in zip(words, plain, strict=True) if flag] == ["15th", "1990,", "70", "12"]


def test_a_name_the_text_spells_out_is_protected_whole_even_its_sentence_initial_function_word():
    # NQ #286: the passage "My Summer Story" begins "My Summer Story, originally released ...";
    # "My" opens the sentence, so without the title it was pruned as a function word.
    text = "My Summer Story, originally released as It Runs in the Family, follows the Parkers. my summer story."
    words = word_spans(text)

    def kept(names):
        flags = protected_words(text, words, set(), names=names)
        return [text[a:b] for (a, b), flag in zip(words, flags, strict=True) if flag]

    assert "My" not in kept([])
    titled = kept(["My Summer Story (1994 film)"])  # the bracketed disambiguation is not part of the name
    assert titled[:3] == ["My", "Summer", "Story,"]
    assert "my" not in titled  # the same words without the title's capitals are not the name


def test_number_words_are_numbers_and_protect_what_they_count_too():
    # HotpotQA #16: "songs that appear on their first four studio albums" lost "four".
    text = "They recorded four studio albums and one live record, selling two million copies."
    words = word_spans(text)
    kept = [text[a:b] for (a, b), flag in zip(words, protected_words(text, words, set()), strict=True) if flag]
    # "one" is a pronoun as often as a number ("one of the ..."): not protected.
    assert kept == ["four", "studio", "two", "million", "copies."]
