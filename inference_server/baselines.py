"""Baselines on the same split as the model: TF-IDF + logistic regression, and frozen MiniLM
embeddings + logistic regression (both with balanced class weights).

Development-time only (scikit-learn is in the `dev` extra); nothing at runtime imports this.
Hyperparameters are fixed in advance (no search), so no decision looks at test; C is the
scikit-learn default.

    python -m inference_server.baselines [--corpus DIR] [--esconv DIR] [--cache DIR]

prints JSON: for each baseline, the full report on dev and test, and homework-vs-none on the
ESConv test split when `--esconv` is given. With `--esconv` it also prints
`esconv_in_domain_tfidf`: a TF-IDF model trained on ESConv's *own* train split ("Providing
Suggestions" or not) and scored on its test split, a reference for how far that label can be
learnt at all. It is an experiment only: ESConv is CC BY-NC and nothing shipped trains on it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference_server.data.splits import split_examples
from inference_server.dataset import DatasetError, Example, read_corpus
from inference_server.evaluate import Report, binary_scores, full_report
from inference_server.labels import LABELS, NONE_LABEL
from inference_server.realtalk import RealTalk, trainable_sources

SEED = 13


def _logreg() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, class_weight="balanced", random_state=SEED)


class LinearBaseline:
    """Two logistic regressions (label, review) over a featuriser fitted on train texts."""

    def __init__(self, featurise: Any) -> None:
        self.featurise = featurise
        self.label_model = _logreg()
        self.review_model = _logreg()

    def fit(self, examples: Sequence[Example]) -> LinearBaseline:
        x = self.featurise.fit_transform([ex.text for ex in examples])
        self.label_model.fit(x, [ex.label for ex in examples])
        reviews = [ex.review for ex in examples]
        # A corpus slice without both review classes cannot fit the review model.
        self.review_model = self.review_model.fit(x, reviews) if len(set(reviews)) == 2 else None
        return self

    def predict(self, texts: Sequence[str]) -> tuple[list[str], list[bool]]:
        x = self.featurise.transform(list(texts))
        labels = [str(v) for v in self.label_model.predict(x)]
        if self.review_model is None:
            return labels, [False] * len(labels)
        return labels, [bool(v) for v in self.review_model.predict(x)]


def tfidf_baseline() -> LinearBaseline:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return LinearBaseline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True))


class FrozenEmbeddings:
    """Mean-pooled frozen MiniLM embeddings (the model's features without its heads)."""

    def __init__(self, cache_dir: Path | None) -> None:
        from inference_server.train import load_encoder

        self.encoder, self.tokenizer = load_encoder()
        self.cache_dir = cache_dir

    def fit_transform(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.transform(texts)

    def transform(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        from inference_server.train import pooled_embeddings

        pooled = pooled_embeddings(self.encoder, self.tokenizer, texts, self.cache_dir)
        return pooled.numpy()


def embedding_baseline(cache_dir: Path | None) -> LinearBaseline:
    return LinearBaseline(FrozenEmbeddings(cache_dir))


def score(model: LinearBaseline, examples: Sequence[Example]) -> Report:
    labels, reviews = model.predict([ex.text for ex in examples])
    return full_report(
        [ex.label for ex in examples], labels, [ex.review for ex in examples], reviews
    )


def score_esconv(model: LinearBaseline, directory: Path, window: str) -> Report:
    from inference_server.esconv import read_split

    items = read_split(directory, "test", window)  # type: ignore[arg-type]
    labels, _ = model.predict([item.text for item in items])
    scores = binary_scores([i.is_suggestion for i in items], [p != NONE_LABEL for p in labels])
    return {"split": "test", "window": window, "n": len(items), "homework_vs_none": scores}


def esconv_in_domain(directory: Path, window: str) -> Report:
    """TF-IDF + logistic regression trained on ESConv train, scored on ESConv test."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from inference_server.esconv import read_split

    train = read_split(directory, "train", window)  # type: ignore[arg-type]
    test = read_split(directory, "test", window)  # type: ignore[arg-type]
    featurise = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model = _logreg().fit(
        featurise.fit_transform([i.text for i in train]), [i.is_suggestion for i in train]
    )
    predicted = [bool(v) for v in model.predict(featurise.transform([i.text for i in test]))]
    scores = binary_scores([i.is_suggestion for i in test], predicted)
    return {
        "train": "train",
        "split": "test",
        "window": window,
        "n": len(test),
        "homework_vs_none": scores,
    }


_PROPOSAL = re.compile(
    r"\b(you (could|can|might|should|may want to)|try|why don'?t you|i'?d (like|suggest)|"
    r"how about|what if|would you be willing|make sure|this week|before (we|next)|"
    r"recommend|suggest|going to|plan)\b",
    re.IGNORECASE,
)
_KEYWORDS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (label, re.compile(pattern, re.IGNORECASE))
    for label, pattern in (
        ("journal", r"\b(journal|diary|write (it |them |things )?down|log|keep track|record)"),
        ("learn", r"\b(read|book|leaflet|pamphlet|handout|website|video|podcast|look (at|into))"),
        ("practice", r"\b(breath|relax|mindful|meditat|practi[cs]e|grounding|visuali)"),
        (
            "take_action",
            r"\b(call|talk to|go (to|for|back)|join|cut (down|back)|quit|book|"
            r"appointment|walk|take|start|stop|ask)",
        ),
    )
)
_REVIEW = re.compile(
    r"\b(last (time|week|session)|how did .{0,40}go|were you able|did you (manage|get|try)|"
    r"how('s| has| have) .{0,30}going)",
    re.IGNORECASE,
)


class KeywordRule:
    """A hand-written cue rule on the therapist turn: a proposal marker and a label's cue word
    set homework; a follow-up phrase flags review. The floor a learned model must clear."""

    def fit(self, examples: Sequence[Example]) -> KeywordRule:
        return self

    def predict_examples(self, examples: Sequence[Example]) -> tuple[list[str], list[bool]]:
        labels: list[str] = []
        reviews: list[bool] = []
        for ex in examples:
            turn = ex.therapist_text
            label = NONE_LABEL
            if _PROPOSAL.search(turn):
                label = next((name for name, cue in _KEYWORDS if cue.search(turn)), NONE_LABEL)
            labels.append(label)
            reviews.append(bool(_REVIEW.search(turn)))
        return labels, reviews


def score_rule(rule: KeywordRule, examples: Sequence[Example]) -> Report:
    labels, reviews = rule.predict_examples(examples)
    return full_report(
        [ex.label for ex in examples], labels, [ex.review for ex in examples], reviews
    )


def run(
    corpus: Path,
    cache_dir: Path | None,
    esconv_dir: Path | None,
    window: str = "reply",
    realtalk: RealTalk | None = None,
) -> dict[str, Any]:
    """Fit each baseline on the model's training data (the corpus' train split, and with
    `realtalk` its licence-allowed train units); report dev, test, the real-talk dev and test
    splits, and (optionally) ESConv test."""
    splits = split_examples(read_corpus(corpus))
    real = realtalk.splits() if realtalk is not None else None
    train = list(splits["train"])
    if real is not None:
        train += [ex for ex in real["train"] if ex.source in trainable_sources()]
    results: dict[str, Any] = {"labels": list(LABELS), "trained_on": len(train)}
    rule = KeywordRule()
    results["keyword_rule"] = {
        "dev": score_rule(rule, splits["dev"]),
        "test": score_rule(rule, splits["test"]),
        **(
            {f"realtalk_{n}": score_rule(rule, real[n]) for n in ("dev", "test")}
            if real is not None
            else {}
        ),
    }
    for name, model in (
        ("tfidf_logreg", tfidf_baseline()),
        ("minilm_frozen_logreg", embedding_baseline(cache_dir)),
    ):
        model.fit(train)
        entry: dict[str, Any] = {
            "dev": score(model, splits["dev"]),
            "test": score(model, splits["test"]),
        }
        if real is not None:
            entry.update({f"realtalk_{n}": score(model, real[n]) for n in ("dev", "test")})
        if esconv_dir is not None:
            entry["esconv"] = score_esconv(model, esconv_dir, window)
        results[name] = entry
    if esconv_dir is not None:
        results["esconv_in_domain_tfidf"] = esconv_in_domain(esconv_dir, window)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    from inference_server.esconv import ESConvError
    from inference_server.train import DEFAULT_CORPUS, default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--cache", type=Path, default=default_cache_dir())
    parser.add_argument("--esconv", type=Path, default=None, help="ESConv folder (optional)")
    parser.add_argument("--window", default="reply", choices=["reply", "context", "both"])
    parser.add_argument(
        "--shared-data",
        type=Path,
        default=None,
        help="shared data folder: also train on the real-talk train units and score its splits",
    )
    args = parser.parse_args(argv)
    realtalk = RealTalk(shared=args.shared_data) if args.shared_data else None
    try:
        results = run(args.corpus, args.cache, args.esconv, args.window, realtalk)
    except (DatasetError, ESConvError) as exc:
        return _error(str(exc))
    except UnicodeDecodeError as exc:
        return _error(f"a data file is not UTF-8 text (byte {exc.start}); convert it to UTF-8")
    except OSError as exc:
        return _error(
            f"cannot read {exc.filename}: {exc.strerror}; check --corpus, --esconv and "
            "--shared-data"
        )
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
