"""How well frozen features separate the classes: a cosine k-NN vote and a standardised, class-balanced
logistic regression, each scored by balanced accuracy on held-out samples.

One implementation for the two places that score features: the online probe during pre-training
(``ultrassl.monitor.probe``: k-NN, and the quick linear score) and fine-tuning's linear probe
(``finetune classify --mode linear``: the same logistic regression at each ``linear_c``, picked on
validation).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's balanced accuracy, quiet when a prediction names a class the held-out samples lack."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def knn_votes(
    train: np.ndarray,
    y_train: np.ndarray,
    query: np.ndarray,
    k: int,
    n_classes: int,
    temperature: float = 0.07,
) -> np.ndarray:
    """Each query's class votes [n, n_classes] of a cosine k-NN classifier, weighted by
    exp(similarity / T) (DINO's) and normalised to sum to 1 (argmax is the prediction).

    Features are standardised with the training frames' mean and std first: pooled features of a young
    encoder share one large common direction, which makes every raw cosine similarity close to 1 and
    the vote a plain majority vote."""
    with torch.autocast("cpu", enabled=False):  # float32 similarities whatever the loop's autocast
        train_t = torch.as_tensor(train, dtype=torch.float32)
        mean, std = train_t.mean(0), train_t.std(0, unbiased=False).clamp_min(1e-6)
        a = F.normalize((train_t - mean) / std, dim=1)
        b = F.normalize((torch.as_tensor(query, dtype=torch.float32) - mean) / std, dim=1)
        sim, idx = (b @ a.T).topk(min(k, len(a)), dim=1)
        votes = torch.zeros(len(b), n_classes)
        votes.scatter_add_(1, torch.as_tensor(y_train, dtype=torch.int64)[idx], (sim / temperature).exp())
    return (votes / votes.sum(1, keepdim=True)).numpy()


def knn_score(
    train: np.ndarray,
    y_train: np.ndarray,
    val: np.ndarray,
    y_val: np.ndarray,
    k: int,
    temperature: float = 0.07,
) -> float:
    """Balanced accuracy of :func:`knn_votes`' predictions on held-out samples."""
    n_classes = int(max(y_train.max(), y_val.max())) + 1
    votes = knn_votes(train, y_train, val, k, n_classes, temperature)
    return balanced_accuracy(y_val, votes.argmax(1))


def fit_linear_probe(
    train: np.ndarray, y_train: np.ndarray, c: float, max_iter: int, seed: int = 0
) -> tuple[StandardScaler, LogisticRegression]:
    """A logistic regression (inverse L2 strength ``c``, class-balanced) on standardised features, and
    the standardiser: predict with ``clf.predict(scaler.transform(x))``."""
    scaler = StandardScaler().fit(train)
    clf = LogisticRegression(C=c, max_iter=max_iter, class_weight="balanced", random_state=seed)
    clf.fit(scaler.transform(train), y_train)
    return scaler, clf


def linear_score(
    train: np.ndarray, y_train: np.ndarray, val: np.ndarray, y_val: np.ndarray, seed: int = 0
) -> float:
    """Balanced accuracy of a standardised, class-balanced logistic regression (the quick linear probe:
    ``C`` 1, at most 500 iterations)."""
    with warnings.catch_warnings():  # few iterations may not converge; the score is still a fair signal
        warnings.simplefilter("ignore")
        scaler, clf = fit_linear_probe(train, y_train, c=1.0, max_iter=500, seed=seed)
        return balanced_accuracy(y_val, clf.predict(scaler.transform(val)))
