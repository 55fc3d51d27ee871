"""An embedded CivilComments stand-in: template comments whose toxicity goes with identity mentions in train."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..hparams import hp
from ..registry import DATASETS
from ._text import TextDataset, TextSource

IDENTITIES = ("male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white")
# A few surface forms per identity: the model must treat them as one cue, as real comments vary.
TERMS = {
    "male": ("men", "guys", "fathers"), "female": ("women", "mothers", "girls"),
    "LGBTQ": ("gay people", "lesbians", "trans people"), "christian": ("christians", "catholics", "pastors"),
    "muslim": ("muslims", "imams", "the mosque"), "other_religions": ("jews", "hindus", "buddhists"),
    "black": ("black people", "black voters", "black families"), "white": ("white people", "white voters", "whites"),
}
TOXIC = ("stupid", "idiotic", "disgusting", "pathetic", "worthless", "moronic", "vile", "dumb", "ignorant",
         "hateful", "clueless", "useless", "ridiculous", "garbage", "awful", "sick", "crooked", "lying",
         "corrupt", "toxic")
BENIGN = ("thoughtful", "reasonable", "helpful", "kind", "fair", "honest", "smart", "decent", "useful", "careful",
          "sensible", "generous", "insightful", "balanced", "polite", "patient", "informed", "clear", "calm",
          "respectful")
TOPICS = ("the new tax plan", "this article", "the council vote", "the school board", "the pipeline",
          "the housing bill", "the mayor", "the election", "the budget", "the court ruling", "the bus service",
          "the park project")
OPENERS = ("honestly", "frankly", "i think", "in my view", "to be fair", "look", "well", "again")
GROUP_NAMES = ("nontoxic_no_identity", "nontoxic_identity", "toxic_no_identity", "toxic_identity")
EVAL_GROUPS = tuple(f"{'toxic' if y else 'nontoxic'}_{i}" for i in IDENTITIES for y in (0, 1))


@dataclass(frozen=True)
class ToyCommentsHParams:
    n_train: int = hp(4000, ge=8, help="training comments")
    n_val: int = hp(1000, ge=8, help="validation comments")
    n_test: int = hp(2000, ge=8, help="test comments")
    train_agreement: float = hp(0.85, ge=0, le=1, help="in train, P(a comment mentions an identity) for toxic "
                                                       "comments, and 1 minus it for non-toxic ones (val/test: 0.5)")
    label_noise: float = hp(0.05, ge=0, lt=0.5, help="fraction of training labels flipped (the core cue is imperfect)")
    max_length: int = hp(48, ge=8, help="tokens per comment after tokenisation ([CLS] and [SEP] included)")
    seed: int = hp(0, help="seed of the data draw (fixed splits; the run seed does not change the data)")


def comment(rng: np.random.Generator, toxic: bool, identities: list[str]) -> str:
    """One comment: an opener, a topic, the core phrase, and the identity terms. The core phrase is an
    insult or a negated compliment when toxic, a compliment or a negated insult when not: the label needs
    the word and its negation together, a later-learned cue than an identity term's mere presence."""
    negated = rng.random() < 0.5
    polarity_toxic = toxic != negated
    words = [str(rng.choice(OPENERS)), str(rng.choice(TOPICS)), "is" if rng.random() < 0.5 else "seems",
             *(["not"] if negated else []), str(rng.choice(TOXIC if polarity_toxic else BENIGN))]
    for ident in identities:
        words += ["and", "so", "are", str(rng.choice(TERMS[ident]))] if rng.random() < 0.5 else \
            ["says", "the", "post", "about", str(rng.choice(TERMS[ident]))]
    return " ".join(words)


def draw_split(rng: np.random.Generator, n: int, agreement: float, noise: float) -> tuple[list[str], np.ndarray,
                                                                                          np.ndarray]:
    """(texts, labels, identity membership [n, 8]): toxic with probability 0.3; a comment mentions one or two
    identities with probability `agreement` if toxic and 1 - agreement if not; labels flipped with `noise`."""
    y = (rng.random(n) < 0.3).astype(np.int64)
    mentions = rng.random(n) < np.where(y == 1, agreement, 1 - agreement)
    members = np.zeros((n, len(IDENTITIES)), dtype=bool)
    texts = []
    for i in range(n):
        k = (1 + int(rng.random() < 0.3)) if mentions[i] else 0
        chosen = list(rng.choice(len(IDENTITIES), size=k, replace=False)) if k else []
        members[i, chosen] = True
        texts.append(comment(rng, bool(y[i]), [IDENTITIES[j] for j in chosen]))
    flip = rng.random(n) < noise
    return texts, np.where(flip, 1 - y, y), members


@DATASETS.register("toycomments")
class ToyComments(TextDataset):
    """CivilComments stand-in (embedded): toxic comments mention identities more often in train only.

    Not CivilComments: template comments (an opener, a topic, a core phrase, then zero, one or two identity
    mentions among the 8 CivilComments identities, three surface forms each). Toxic: an insult, or "not" and
    a compliment; non-toxic: a compliment, or "not" and an insult (half negated, so the label needs the word
    and the negation together).
    Toxic with probability 0.3; in train a toxic comment mentions an identity with probability 0.85 and a
    non-toxic one with 0.15 (the spurious cue), in val and test 0.5 either way; 5% of training labels are
    flipped. Training groups: label x mentions-any-identity (4); evaluation groups: label x each identity
    (16, overlapping), as CivilComments'. Defaults: `bert_tiny` (a WordPiece tokenizer trained on the
    training text, no download). Details: docs/methods.md#toycomments.
    """

    HParams = ToyCommentsHParams
    tasks = {"y": 2}
    group_names = GROUP_NAMES
    eval_group_names = EVAL_GROUPS
    version = "1"
    # CPU-sized defaults, not tuned per method. No early stopping: every method first learns the identity
    # shortcut (val worst-group 0 for several epochs) and the negation-dependent cue later, so a patience on
    # the val metrics would end runs before the core cue is learned; selection still picks the epoch.
    defaults = {
        "train.epochs": 20, "train.batch_size": 32, "train.optimizer": "adamw", "train.lr": 1e-3,
        "train.weight_decay": 0.01, "train.patience": 0, "l1.weight": 0.05, "backbone.vocab_size": 600,
    }

    def text_source(self) -> TextSource:
        h = self.hparams
        rng = np.random.default_rng(h.seed)
        parts = [draw_split(rng, h.n_train, h.train_agreement, h.label_noise), draw_split(rng, h.n_val, 0.5, 0.0),
                 draw_split(rng, h.n_test, 0.5, 0.0)]
        texts = [t for p in parts for t in p[0]]
        y = np.concatenate([p[1] for p in parts])
        members = np.concatenate([p[2] for p in parts])
        split = np.concatenate([np.full(len(p[1]), i) for i, p in enumerate(parts)])
        g = 2 * y + members.any(1)
        # membership of label x identity, in EVAL_GROUPS order (identity-major, label-minor)
        groups = np.stack([members[:, i] & (y == label) for i in range(len(IDENTITIES)) for label in (0, 1)], 1)
        # The content itself, not the hparams: token stores are never reused for other texts or labels.
        digest = hashlib.sha256("\n".join(texts).encode() + y.tobytes() + groups.tobytes() + split.tobytes())
        return TextSource(texts, y, g, split, digest.hexdigest(), groups)
