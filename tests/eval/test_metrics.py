"""Generation metrics on hand cases."""
import math

from diffmamba.eval.generation import (
    corpus_distinct_n, distinct_n, diversity_metrics, sample_text, split_documents, unigram_entropy,
)
from diffmamba.eval.judge import perplexity


def test_entropy_hand_cases():
    assert unigram_entropy([7] * 50) == 0.0
    assert abs(unigram_entropy([0, 1, 2, 3]) - math.log(4)) < 1e-12
    # p = (1/2, 1/4, 1/4): H = 1.5 bits = 1.5 ln 2 nats
    assert abs(unigram_entropy([5, 5, 6, 7]) - 1.5 * math.log(2)) < 1e-12
    assert unigram_entropy([]) == 0.0


def test_distinct_n_hand_cases():
    seq = [1, 2, 1, 2, 1]
    assert distinct_n(seq, 1) == 2 / 5
    assert distinct_n(seq, 2) == 2 / 4  # (1,2) (2,1) (1,2) (2,1)
    assert distinct_n(seq, 3) == 2 / 3  # (1,2,1) (2,1,2) (1,2,1)
    assert distinct_n([1, 2, 3, 4], 2) == 1.0
    assert math.isnan(distinct_n([1], 2))
    # pooled: the second sample repeats the first -> half the n-grams are new
    assert corpus_distinct_n([[1, 2, 3], [1, 2, 3]], 2) == 2 / 4
    assert corpus_distinct_n([[1, 2], [2, 1]], 2) == 1.0  # no n-gram across sample boundaries


def test_diversity_summary_and_perplexity():
    m = diversity_metrics([[3, 3, 3, 3], [1, 2, 3, 4]])
    assert abs(m["entropy"] - math.log(4) / 2) < 1e-12
    assert m["distinct_1"] == (1 / 4 + 1) / 2
    assert m["num_samples"] == 2
    assert abs(perplexity([(math.log(2) * 3, 3), (math.log(8), 1)]) - math.exp((3 * math.log(2) + math.log(8)) / 4)) < 1e-12
    assert math.isnan(perplexity([]))


def test_documents_split_at_eos():
    assert split_documents([1, 2, 0, 0, 3, 0], eos_id=0) == [[1, 2], [3]]

    class Tok:
        eos_id = 0

        def decode(self, ids):
            return "-".join(map(str, ids))

    assert sample_text(Tok(), [1, 2, 0, 3]) == "1-2\n\n3"
