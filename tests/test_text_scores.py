"""The text side: text_token_scores (LayerIntegratedGradients on the token
embeddings) against a hand-written Riemann sum, completeness, batching,
bad input, and open_clip's ViT-B-32 built without weights."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_sfam.image_text.text import baseline_ids, text_token_scores
from captum_sfam.image_text.towers import TwoTower

WORDS = ["a", "red", "blue", "disc", "square", "and", "striped"]
VOCAB = ["<pad>", "<start>", "<end>", *WORDS]
PAD, START, END = 0, 1, 2
CONTEXT = 8
DIM = 6


class TinyText(nn.Module):
    """ids -> (T, DIM): token embedding, a tanh mixing of positions (the
    words interact), pooled at <end> and mean-pooled."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.token_embedding = nn.Embedding(len(VOCAB), 5)
        self.mix = nn.Linear(CONTEXT * 5, CONTEXT * 5)
        self.proj = nn.Linear(10, DIM)

    def from_embeddings(self, e: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(e.flatten(1))).view_as(e) + e
        end = (ids == END).long().argmax(1)
        pooled = h[torch.arange(len(ids)), end]
        return self.proj(torch.cat([pooled, h.mean(1)], dim=-1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.from_embeddings(self.token_embedding(ids), ids)


def encode(text: str):
    return [START, *[VOCAB.index(w) for w in text.split()], END]


def tiny_tower(seed: int = 0, logit_scale: float = 3.0) -> TwoTower:
    text = TinyText(seed).eval()
    image = nn.Sequential(nn.Flatten(), nn.Linear(12, DIM)).eval()
    return TwoTower(
        image, text, text.token_embedding, encode=encode,
        decode=lambda t: VOCAB[t], context_length=CONTEXT, pad_token_id=PAD,
        special_token_ids=(PAD, START, END), vocab_size=len(VOCAB),
        logit_scale=logit_scale,
    )  # fmt: skip


def slow_ig(tower, image_emb, ids, steps=2000):
    """Riemann midpoint IG on the token embeddings, one text at a time:
    (e - e') * mean_k grad s(e' + a_k (e - e')), summed over the width."""
    text = tower.text_model
    base = ids.clone()
    base[~torch.isin(ids, torch.tensor([PAD, START, END]))] = PAD
    out = []
    for t in range(len(ids)):
        e = text.token_embedding(ids[t : t + 1]).detach()
        e0 = text.token_embedding(base[t : t + 1]).detach()
        alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
        path = (e0 + alphas.view(-1, 1, 1).float() * (e - e0)).requires_grad_()
        emb = text.from_embeddings(path, ids[t : t + 1].expand(steps, -1))
        u = image_emb[t : t + 1].expand(steps, -1)
        s = tower.logit_scale * nn.functional.cosine_similarity(u, emb, dim=-1)
        (grad,) = torch.autograd.grad(s.sum(), path)
        out.append(((e - e0)[0] * grad.mean(0)).sum(-1))
    return torch.stack(out)


texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=CONTEXT - 2).map(" ".join)


@settings(max_examples=15)
@given(st.lists(texts, min_size=1, max_size=3), st.integers(0, 3))
def test_scores_equal_a_riemann_sum_and_complete(batch, seed):
    tower = tiny_tower(seed)
    image = torch.randn(1, DIM, generator=torch.Generator().manual_seed(seed))
    out = text_token_scores(tower, image, batch, n_steps=64)
    ids = tower.tokenize(batch)
    slow = slow_ig(tower, image.expand(len(batch), -1), ids)
    for t, text in enumerate(batch):
        n = len(text.split()) + 2
        assert out.tokens[t] == ["<start>", *text.split(), "<end>"]
        assert out.scores[t].shape == (n,) and out.scores[t].dtype == torch.float32
        torch.testing.assert_close(out.scores[t], slow[t, :n], atol=2e-4, rtol=1e-3)
        assert float(slow[t, n:].abs().sum()) == 0  # padding: no score
        # completeness: the scores sum to score - baseline up to delta
        gap = out.scores[t].sum() - (out.score[t] - out.baseline_score[t])
        assert abs(float(gap - out.delta[t])) < 1e-4
        assert abs(float(out.delta[t])) < 1e-3
        assert out.scores[t][0] == 0 and out.scores[t][-1] == 0  # kept specials


def test_score_is_the_models_own_and_independent_of_batching():
    tower = tiny_tower(1)
    image = torch.randn(2, DIM)
    batch = ["a red disc", "blue square and a striped disc"]
    out = text_token_scores(tower, image, batch)
    own = tower.score(image, tower.encode_text(batch)).diagonal()
    torch.testing.assert_close(out.score, own)
    for t in range(2):
        one = text_token_scores(tower, image[t : t + 1], batch[t])
        torch.testing.assert_close(one.scores[0], out.scores[t], atol=1e-5, rtol=1e-5)
    # a shared image is the same as the image repeated per text
    shared = text_token_scores(tower, image[:1], batch)
    again = text_token_scores(tower, image[:1].expand(2, -1), batch)
    for a, b in zip(shared.scores, again.scores):
        torch.testing.assert_close(a, b)


@settings(max_examples=10)
@given(st.floats(0.5, 20.0))
def test_scores_are_linear_in_the_score_scale(scale):
    image = torch.randn(1, DIM, generator=torch.Generator().manual_seed(3))
    one = text_token_scores(tiny_tower(2, 1.0), image, "a red striped disc")
    scaled = text_token_scores(tiny_tower(2, scale), image, "a red striped disc")
    torch.testing.assert_close(scaled.scores[0], scale * one.scores[0], rtol=1e-4,
                               atol=1e-5)  # fmt: skip


def test_baseline_keeps_specials_at_their_positions():
    ids = torch.tensor([[START, 3, 4, END, PAD], [START, END, PAD, PAD, PAD]])
    base = baseline_ids(ids, (PAD, START, END), PAD)
    assert base.tolist() == [[START, PAD, PAD, END, PAD], [START, END, PAD, PAD, PAD]]


def test_bad_input_names_the_argument():
    tower = tiny_tower()
    image = torch.randn(1, DIM)
    with pytest.raises(ValueError, match="texts"):
        text_token_scores(tower, image, [])
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        text_token_scores(tower, image, ["a disc", "  "])
    with pytest.raises(ValueError, match="width"):
        text_token_scores(tower, torch.randn(1, DIM + 1), "a disc")
    with pytest.raises(ValueError, match="rows for 2 texts"):
        text_token_scores(tower, torch.randn(3, DIM), ["a disc", "a square"])
    with pytest.raises(ValueError, match="vocabulary"):  # another tokenizer's ids
        text_token_scores(tower, image, torch.full((1, CONTEXT), 400))
    with pytest.raises(ValueError, match="n_steps"):
        text_token_scores(tower, image, "a disc", n_steps=0)
    with pytest.raises(ValueError, match="move them to one device"):
        text_token_scores(tower, torch.randn(1, DIM, device="meta"), "a disc")
    with pytest.raises(ValueError, match="NaN"):
        text_token_scores(tower, torch.full((1, DIM), float("nan")), "a disc")
    with pytest.warns(UserWarning, match="red disc red disc"):
        out = text_token_scores(tower, image, "red disc red disc red disc red")
    assert out.tokens[0][-1] == "<end>" and len(out.tokens[0]) == CONTEXT


def test_the_model_is_left_as_it_was():
    tower = tiny_tower()
    tower.text_model.train()
    before = {k: v.clone() for k, v in tower.text_model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text_token_scores(tower, torch.randn(1, DIM), "a red disc")
    assert tower.text_model.training
    assert not tower.text_model._forward_hooks
    assert not tower.text_model.token_embedding._forward_hooks
    assert all(p.grad is None for p in tower.text_model.parameters())
    for k, v in tower.text_model.state_dict().items():
        assert torch.equal(v, before[k])


def test_open_clip_vit_b_32_without_weights():
    open_clip = pytest.importorskip("open_clip")
    from captum_sfam.image_text import two_tower

    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    try:
        tower = two_tower(model.eval(), open_clip.get_tokenizer("ViT-B-32"))
    except TypeError as error:  # the adapter is not in yet
        pytest.skip(f"open_clip adapter missing: {error}")
    image = torch.randn(1, 512)
    out = text_token_scores(tower, image, ["a photo of a cat", "a dog"], n_steps=4)
    assert [len(s) for s in out.scores] == [len(t) for t in out.tokens]
    assert len(out.tokens[0]) == 7 and len(out.tokens[1]) == 4  # start, words, end
    for t in range(2):
        gap = out.scores[t].sum() - (out.score[t] - out.baseline_score[t])
        assert abs(float(gap - out.delta[t])) < 1e-3 * max(1, abs(float(gap)))
        assert torch.isfinite(out.scores[t]).all()
