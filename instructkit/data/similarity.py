"""How alike two instructions are: Self-Instruct's ROUGE-L novelty filter (exact, with a fast path),
and character n-gram TF-IDF cosine for near duplicates and for contamination with an evaluation set.

Why TF-IDF on character 3-5-grams for near duplicates rather than sentence embeddings: generated
near duplicates are mostly the same task reworded a little ("Give a synonym for X" / "Give me a
synonym of X"), which shared character n-grams catch; weighting by IDF keeps "Write a ..."
boilerplate from counting; it needs no model, runs offline in seconds for thousands of records
(one sparse product), and its score is easy to check by hand. Embeddings would also catch
paraphrases with different words, at the cost of a model load; ROUGE-L already guards novelty.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
from rouge_score import rouge_scorer
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

BLOCK = 512  # rows per block of a similarity product, so memory stays flat for any number of records


class RougeLFilter:
    """Instructions kept so far, and which new ones are too like one of them (ROUGE-L F > threshold).

    Decides exactly as scoring each new instruction against every kept one with rouge-score (the
    Self-Instruct filter, quadratic in Python), but fast: ROUGE-L F = 2 LCS / (len a + len b), and the
    LCS is at most the number of tokens the two share counted with repeats, which one sparse product
    gives for all pairs of a batch at once. Only pairs whose bound passes the threshold run
    rouge-score's LCS, and each drop names the most similar kept text, as the full scan would.
    """

    def __init__(self, threshold: float = 0.7):
        self.threshold = threshold
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.texts: list[str] = []
        self.tokens: list[list[str]] = []
        self._columns: dict[tuple[str, int], int] = {}
        self._rows: list[np.ndarray] = []
        self._kept_matrix = sparse.csr_matrix((0, 0))

    def _features(self, tokens: list[str]) -> np.ndarray:
        """Each token with its occurrence number ("the", 2): a dot product of these counts shared tokens with repeats."""
        seen: Counter[str] = Counter()
        columns = []
        for token in tokens:
            seen[token] += 1
            columns.append(self._columns.setdefault((token, seen[token]), len(self._columns)))
        return np.array(sorted(set(columns)), dtype=np.int64)

    def _matrix(self, rows: list[np.ndarray]) -> sparse.csr_matrix:
        indptr = np.cumsum([0] + [len(r) for r in rows])
        indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        return sparse.csr_matrix((np.ones(len(indices)), indices, indptr),
                                 shape=(len(rows), len(self._columns)))

    def add(self, texts: list[str]) -> list[tuple[int, float] | None]:
        """Keep each text unless it is too like a kept one (checked in order, so the batch's own
        earlier texts count); for each, None when kept, else (index of the kept text, its ROUGE-L F)."""
        decisions: list[tuple[int, float] | None] = []
        for start in range(0, len(texts), BLOCK):
            decisions += self._add_block(texts[start:start + BLOCK])
        return decisions

    def _add_block(self, texts: list[str]) -> list[tuple[int, float] | None]:
        tokens = [self.scorer._tokenizer.tokenize(text) for text in texts]
        rows = [self._features(t) for t in tokens]
        n_kept = len(self.texts)
        width = len(self._columns)
        kept = self._kept_matrix
        kept = sparse.csr_matrix((kept.data, kept.indices, kept.indptr), shape=(n_kept, width))
        new = self._matrix(rows)
        shared = (new @ sparse.vstack([kept, new]).T).tocsr()  # shared tokens, new x (kept + new)
        lengths = np.array([len(t) for t in self.tokens + tokens])
        decisions: list[tuple[int, float] | None] = []
        position: dict[int, int] = {}  # block index of a text kept in this block -> its index among all kept
        for i, own in enumerate(tokens):
            row = shared.getrow(i)
            others = row.indices
            bound = 2 * row.data / np.maximum(lengths[others] + len(own), 1)
            # The likeliest first; stop once no bound can reach the threshold or beat the best found.
            order = np.argsort(-bound, kind="stable")
            best, best_index = -1.0, -1
            for j, b in zip(others[order], bound[order]):
                if b < max(self.threshold, best) - 1e-9:  # the margin: rouge-score's F of an exact 0.7 can be 0.7000000000000001
                    break
                if j >= n_kept and (j - n_kept) not in position:  # a later text, or one dropped
                    continue
                index = int(j) if j < n_kept else position[j - n_kept]
                score = rouge_scorer._score_lcs(self.tokens[j] if j < n_kept else tokens[j - n_kept], own).fmeasure
                if score > best or (score == best and index < best_index):  # ties: the first kept, as argmax
                    best, best_index = score, index
            decision = (best_index, round(best, 4)) if best > self.threshold else None
            decisions.append(decision)
            if decision is None:
                position[i] = n_kept + len(position)
        for i in position:
            self.texts.append(texts[i])
            self.tokens.append(tokens[i])
            self._rows.append(rows[i])
        self._kept_matrix = self._matrix(self._rows)
        return decisions


def _tfidf() -> TfidfVectorizer:
    return TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)


def _blocks(left: sparse.csr_matrix, right: sparse.csr_matrix) -> Iterator[tuple[int, np.ndarray]]:
    """Cosine similarities of every left row with every right row (rows are L2-normalized), a block at a time."""
    for start in range(0, left.shape[0], BLOCK):
        yield start, (left[start:start + BLOCK] @ right.T).toarray()


def near_duplicates(texts: list[str], threshold: float) -> dict[int, tuple[int, float]]:
    """Texts to drop as near duplicates of an earlier kept one: index -> (kept index, cosine).

    Greedy in order, as a person would read the file: the first of a group is kept."""
    if len(texts) < 2:
        return {}
    matrix = _tfidf().fit_transform(texts)
    similar: dict[int, list[tuple[int, float]]] = {}
    for start, block in _blocks(matrix, matrix):
        for offset, row in enumerate(block):
            i = start + offset
            earlier = np.flatnonzero(row[:i] >= threshold)
            if len(earlier):
                similar[i] = [(int(j), float(row[j])) for j in earlier[np.argsort(-row[earlier])]]
    dropped: dict[int, tuple[int, float]] = {}
    for i in sorted(similar):
        for j, score in similar[i]:
            if j not in dropped:
                dropped[i] = (j, round(score, 4))
                break
    return dropped


def contaminated(texts: list[str], excluded: list[str], threshold: float) -> dict[int, tuple[int, float]]:
    """Texts too like one of an evaluation set's: index -> (index in `excluded`, cosine)."""
    if not texts or not excluded:
        return {}
    vectorizer = _tfidf().fit(texts + excluded)
    matrix, others = vectorizer.transform(texts), vectorizer.transform(excluded)
    found: dict[int, tuple[int, float]] = {}
    for start, block in _blocks(matrix, others):
        for offset, row in enumerate(block):
            j = int(np.argmax(row))
            if row[j] >= threshold:
                found[start + offset] = (j, round(float(row[j]), 4))
    return found
