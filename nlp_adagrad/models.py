"""Models whose token tables produce sparse gradients, each naming them in `sparse_tables()`.

The classifiers read a batch as EmbeddingBag input (flat ids plus offsets); their token table
is `model.embedding`, a `SparseBag` (an EmbeddingBag with sparse, coalesced gradients), and
everything else is small and dense. The word-vector models (skip-gram, GloVe) are nothing but
sparse tables; `word_vectors()` is what they hand to users.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nlp_adagrad import pages
from nlp_adagrad.config import ModelConfig
from nlp_adagrad.sparse_bag import SparseBag, group_ids

NO_HEAD = torch.empty(0)  # what the C++ kernels take for logreg's missing dense weight


class BagClassifier(nn.Module):
    """What the two classifiers share: a `SparseBag` token table (`self.embedding`), a dense
    `classify` on its bag outputs, and the batch's loss with its gradients."""

    embedding: SparseBag
    _slot_of: torch.Tensor | None = None  # the C++ kernel's row -> slot scratch

    def sparse_tables(self) -> dict[str, nn.Parameter]:
        """The tables with sparse gradients, by name: what telemetry reads."""
        return {"embedding": self.embedding.weight}

    def classify(self, bags: torch.Tensor) -> torch.Tensor:
        """Logits from the bag outputs (what data parallelism recomputes on every rank)."""
        raise NotImplementedError

    def dense_layer(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(weight or None, bias) of the dense layer after the bags."""
        raise NotImplementedError

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embedding(ids, offsets))

    def loss_and_gradients(
        self, ids: torch.Tensor, offsets: torch.Tensor, labels: torch.Tensor, kernel=None
    ) -> torch.Tensor:
        """The batch's mean cross-entropy, every parameter's .grad set as backward sets it.

        With `kernel` (nlp_adagrad.kernels) on the CPU, one C++ pass over the documents gives
        the same loss and gradients (tested to 1e-6) without the ~40 operator calls and the
        autograd graph of forward + backward, ~1 ms a step at 32 documents."""
        if kernel is None or ids.device.type != "cpu":
            loss = F.cross_entropy(self(ids, offsets), labels, reduction="sum") / len(offsets)
            loss.backward()
            return loss
        weight, bias = self.dense_layer()
        loss, rows, row_grads, weight_grad, bias_grad = kernel.bag_gradients(
            self.embedding.weight.detach(),
            NO_HEAD if weight is None else weight.detach(),
            bias.detach(),
            ids,
            offsets,
            labels,
            self.embedding.mode == "mean",
            self.slot_scratch(),
        )
        self.set_gradients(rows, row_grads, None if weight is None else weight_grad, bias_grad)
        return loss

    def slot_scratch(self) -> torch.Tensor:
        """The C++ kernels' row -> slot scratch: int32 -1 per table row, made once."""
        if self._slot_of is None:
            self._slot_of = torch.full((self.embedding.weight.shape[0],), -1, dtype=torch.int32)
        return self._slot_of

    def set_gradients(
        self,
        rows: torch.Tensor,
        row_grads: torch.Tensor,
        weight_grad: torch.Tensor | None,
        bias_grad: torch.Tensor,
    ) -> None:
        """.grad of every parameter as backward leaves it: the table's as the coalesced
        sparse `rows` (sorted, distinct) with `row_grads`, the dense layer's as given."""
        _set_sparse_grad(self.embedding.weight, rows, row_grads)
        weight, bias = self.dense_layer()
        if weight is not None:
            weight.grad = weight_grad
        bias.grad = bias_grad


class LogReg(BagClassifier):
    """Multinomial logistic regression on the bag of tokens.

    Row i of the table holds token i's weight for every class, so logits = bag(ids) + bias is
    exactly softmax regression on token frequencies (mode=mean) or counts (mode=sum). Zero
    initialisation: the problem is convex, so no symmetry needs breaking.
    """

    def __init__(self, num_rows: int, num_classes: int, mode: str) -> None:
        super().__init__()
        self.embedding = SparseBag(num_rows, num_classes, mode)
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.zeros_(self.embedding.weight)

    def classify(self, bags: torch.Tensor) -> torch.Tensor:
        return bags + self.bias

    def dense_layer(self) -> tuple[None, torch.Tensor]:
        return None, self.bias


class FastText(BagClassifier):
    """fastText's supervised model: mean of token vectors, then a linear layer.

    Initialised as fastText does: input vectors uniform in (-1/dim, 1/dim), output zero.
    """

    def __init__(self, num_rows: int, num_classes: int, dim: int, mode: str) -> None:
        super().__init__()
        self.embedding = SparseBag(num_rows, dim, mode)
        self.head = nn.Linear(dim, num_classes)
        nn.init.uniform_(self.embedding.weight, -1.0 / dim, 1.0 / dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def classify(self, bags: torch.Tensor) -> torch.Tensor:
        return self.head(bags)

    def dense_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.weight, self.head.bias


def _table(num_rows: int, dim: int) -> nn.Embedding:
    """nn.Embedding(num_rows, dim, sparse=True), on 2 MB pages when large (nlp_adagrad.pages)."""
    table = nn.Embedding(num_rows, dim, sparse=True, _weight=pages.empty(num_rows, dim))
    table.reset_parameters()  # what the constructor does without _weight
    return table


def _word2vec_init(table: nn.Embedding) -> nn.Embedding:
    """Uniform in (-0.5/dim, 0.5/dim), as word2vec.c starts its input vectors."""
    dim = table.weight.shape[1]
    nn.init.uniform_(table.weight, -0.5 / dim, 0.5 / dim)
    return table


def _set_sparse_grad(weight: nn.Parameter, rows: torch.Tensor, values: torch.Tensor) -> None:
    """weight.grad = the rows (sorted, distinct) as a coalesced sparse gradient."""
    weight.grad = torch.sparse_coo_tensor(
        rows.unsqueeze(0), values, weight.shape, is_coalesced=True, check_invariants=False
    )


class SkipGram(nn.Module):
    """Skip-gram with negative sampling: a centre word's input vector scores its context
    words' output vectors (positive) and noise words' (negative), as word2vec does. Input
    vectors start uniform in (-0.5/dim, 0.5/dim), output vectors at zero (word2vec.c)."""

    def __init__(self, num_rows: int, dim: int) -> None:
        super().__init__()
        self.input = _word2vec_init(_table(num_rows, dim))
        self.output = _table(num_rows, dim)
        nn.init.zeros_(self.output.weight)
        self._slot_of: torch.Tensor | None = None  # the C++ kernel's row -> slot scratch

    def sparse_tables(self) -> dict[str, nn.Parameter]:
        return {"input": self.input.weight, "output": self.output.weight}

    def forward(self, centres: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scores (pairs, 1 + negatives): column 0 the context word, the rest the noise words."""
        v = self.input(centres)  # (pairs, dim)
        u = self.output(targets)  # (pairs, 1 + negatives, dim)
        return torch.bmm(u, v.unsqueeze(2)).squeeze(2)

    def word_vectors(self) -> torch.Tensor:
        return self.input.weight.detach()

    @torch.no_grad()
    def loss_and_gradients(
        self, centres: torch.Tensor, targets: torch.Tensor, kernel=None
    ) -> torch.Tensor:
        """The batch's loss, summed over pairs, with both tables' gradients set as coalesced
        sparse rows: what `forward` and `backward` give (tested), computed without the
        (pairs x (1 + negatives) x dim) gradient rows autograd builds and then sums.
        `kernel` (nlp_adagrad.kernels) does it in one C++ pass over the pairs, faster
        still (README, Word vectors)."""
        if kernel is not None and centres.device.type == "cpu":
            if self._slot_of is None:
                self._slot_of = torch.full((self.input.weight.shape[0],), -1, dtype=torch.int32)
            loss, in_rows, in_grad, out_rows, out_grad = kernel.sgns_gradients(
                self.input.weight.detach(),
                self.output.weight.detach(),
                centres,
                targets,
                self._slot_of,
            )
            _set_sparse_grad(self.input.weight, in_rows, in_grad)
            _set_sparse_grad(self.output.weight, out_rows, out_grad)
            return loss.float()
        pairs, width = targets.shape
        flat = targets.reshape(-1)
        v = self.input.weight.index_select(0, centres)
        u = self.output.weight.index_select(0, flat).view(pairs, width, -1)
        scores = torch.bmm(u, v.unsqueeze(2)).squeeze(2)
        signed = scores.clone()
        signed[:, 0].neg_()  # softplus(-s) for the context word, softplus(s) for noise words
        loss = F.softplus(signed).sum()
        g = torch.sigmoid(scores)  # d loss / d score: sigmoid(s) - 1 for the context word
        g[:, 0] -= 1
        grad_v = torch.bmm(g.unsqueeze(1), u).squeeze(1)
        rows, order, starts = group_ids(centres)
        _set_sparse_grad(
            self.input.weight, rows, F.embedding_bag(order, grad_v, starts, mode="sum")
        )
        rows, order, starts = group_ids(flat)
        weights = g.reshape(-1)[order]
        summed = F.embedding_bag(order // width, v, starts, per_sample_weights=weights, mode="sum")
        _set_sparse_grad(self.output.weight, rows, summed)
        return loss


class GloVe(nn.Module):
    """GloVe: word and context vectors and biases; w_i . c_j + b_i + b~_j fits log X_ij.
    All four start uniform in (-0.5/dim, 0.5/dim) as in glove.c; users get W + C."""

    def __init__(self, num_rows: int, dim: int) -> None:
        super().__init__()
        self.word = _table(num_rows, dim)
        self.context = _table(num_rows, dim)
        self.word_bias = _table(num_rows, 1)
        self.context_bias = _table(num_rows, 1)
        for table in (self.word, self.context, self.word_bias, self.context_bias):
            nn.init.uniform_(table.weight, -0.5 / dim, 0.5 / dim)

    def sparse_tables(self) -> dict[str, nn.Parameter]:
        return {
            "word": self.word.weight,
            "context": self.context.weight,
            "word_bias": self.word_bias.weight,
            "context_bias": self.context_bias.weight,
        }

    def forward(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The model's log co-occurrence for each (word, context) entry."""
        dot = (self.word(rows) * self.context(cols)).sum(dim=1)
        return dot + self.word_bias(rows).squeeze(1) + self.context_bias(cols).squeeze(1)

    def word_vectors(self) -> torch.Tensor:
        return (self.word.weight + self.context.weight).detach()


_BUILDERS: dict[str, Callable[[ModelConfig, int, int], nn.Module]] = {
    "logreg": lambda c, rows, k: LogReg(rows, k, c.mode.value),
    "fasttext": lambda c, rows, k: FastText(rows, k, c.dim, c.mode.value),
    "skipgram": lambda c, rows, k: SkipGram(rows, c.dim),
    "glove": lambda c, rows, k: GloVe(rows, c.dim),
}


def build_model(cfg: ModelConfig, num_rows: int, num_classes: int = 0) -> nn.Module:
    """The configured model; its token tables have `num_rows` rows (words, then any bigram
    buckets). `num_classes` is the classifiers' output width."""
    return _BUILDERS[cfg.name](cfg, num_rows, num_classes)
