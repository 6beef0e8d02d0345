"""two_tower: open_clip (ViT, ModifiedResNet) and Hugging Face CLIP / SigLIP
read with no layout or prefix-token argument, tokenizers, the model's own
score, and the bad inputs of the image–text side."""

from __future__ import annotations

import warnings

import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from captum_sfam import LayerCGRAM, LayerSFAM
from captum_sfam.image_text import LayerMultiBlockGrad, TwoTower, two_tower
from captum_sfam.methods import REGISTRY

WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "circle", "square"]


def open_clip_model(kind: str) -> torch.nn.Module:
    """The open_clip CLIP class with a small ViT or ModifiedResNet tower."""
    torch.manual_seed(0)
    text = CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)
    if kind == "vit":
        vision = CLIPVisionCfg(
            layers=2, width=32, head_width=16, patch_size=8, image_size=32, mlp_ratio=2
        )
    else:
        vision = CLIPVisionCfg(
            layers=(1, 1, 1, 1), width=8, head_width=8, image_size=64
        )
    return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()


def hf_tokenizer(context: int = 16):
    """A word-level Hugging Face tokenizer built offline: <s> words </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
        pad_token="<pad>", unk_token="<unk>", model_max_length=context,
    )  # fmt: skip


def hf_model(kind: str, vocab: int = 32):
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    torch.manual_seed(0)
    text = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, vocab_size=vocab, max_position_embeddings=16,
        bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )  # fmt: skip
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, image_size=32, patch_size=8,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "clip":
            config = CLIPConfig(
                text_config=text, vision_config=vision, projection_dim=16
            )
            return CLIPModel(config).eval()
        return SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()


def tower(kind: str) -> TwoTower:
    if kind in ("vit", "rn"):
        return two_tower(open_clip_model(kind))  # default: open_clip's BPE
    return two_tower(hf_model(kind), hf_tokenizer())


KINDS = ["vit", "rn", "clip", "siglip"]
SIZE = {"vit": 32, "rn": 64, "clip": 32, "siglip": 32}
GRID = {"vit": 4, "rn": 2, "clip": 4, "siglip": 4}


@pytest.mark.parametrize("kind", KINDS)
def test_every_member_image_image_and_gradient_members_image_text(kind):
    """No layout, prefix or embedding_func argument on any tower."""
    tw = tower(kind)
    size, grid = SIZE[kind], GRID[kind]
    q = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    s = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    for member in REGISTRY.values():
        method = member.cls(tw.image_model, tw.default_layer, metric="cosine")
        maps = method.attribute(q, s)
        assert maps.shape == (2, 1, grid, grid) and torch.isfinite(maps).all()
    texts = tw.encode_text(["a photo of a cat", "a red circle", "a dog"])
    members = [LayerCGRAM(tw.image_model, tw.default_layer, metric=tw.metric)]
    members.append(LayerMultiBlockGrad(tw.image_model, tw.map_layers, metric=tw.metric))
    for method in members:
        if isinstance(method, LayerMultiBlockGrad) and kind == "rn":
            grid = 16  # the stages' maps on the finest grid (layer1)
        maps = method.attribute(q, references=texts, target=[0, 2])
        assert maps.shape == (2, 1, grid, grid) and torch.isfinite(maps).all()
        assert maps.abs().sum() > 0
        pairs = method.attribute_pairs(q, texts)
        assert pairs.shape == (2, 3, 1, grid, grid)
        torch.testing.assert_close(
            pairs[1, 2], method.attribute(q[1:], references=texts, target=2)[0]
        )


@pytest.mark.parametrize("kind", KINDS)
def test_score_is_the_models_own(kind):
    """CLIP: logit_scale * cos; SigLIP: + logit_bias, probability sigmoid."""
    tw = tower(kind)
    q = torch.rand(2, 3, SIZE[kind], SIZE[kind])
    ids = tw.tokenize(["a photo of a cat", "a dog"])
    img, txt = tw.encode_image(q), tw.encode_text(ids)
    score = tw.score(img, txt)
    model = tw.text_model.model
    with torch.no_grad():
        if kind in ("vit", "rn"):
            i, t, scale = model(q, ids)
            expected = scale * i @ t.T
        else:
            expected = model(input_ids=ids, pixel_values=q).logits_per_image
    torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-5)
    rows = tw.metric(img[:, None].expand(-1, 2, -1).flatten(0, 1), txt.repeat(2, 1))
    torch.testing.assert_close(rows.reshape(2, 2), score)
    prob = tw.probability(img, txt)
    if kind == "siglip":
        torch.testing.assert_close(prob, torch.sigmoid(score))
    else:
        torch.testing.assert_close(prob.sum(-1), torch.ones(2))


def test_prefix_tokens_and_layers_are_read_from_the_towers():
    from captum_sfam._engine.model import patch_size, prefix_tokens

    vit, clip, siglip = open_clip_model("vit"), hf_model("clip"), hf_model("siglip")
    assert prefix_tokens(vit) == 1 and prefix_tokens(vit.visual) == 1
    assert patch_size(vit) == (8, 8)
    assert prefix_tokens(clip) == 1 and prefix_tokens(siglip) == 0
    assert patch_size(clip) == (8, 8) == patch_size(siglip)
    # class-token towers read the last block's first norm, SigLIP its last block
    last = vit.visual.transformer.resblocks[-1]
    assert two_tower(vit).default_layer is last.ln_1
    assert two_tower(vit).map_layers[-1] is last.ln_1
    assert two_tower(siglip).default_layer is siglip.vision_model.encoder.layers[-1]
    assert (
        two_tower(clip).default_layer
        is clip.vision_model.encoder.layers[-1].layer_norm1
    )


def test_real_architectures_vit_b_32_and_rn50_weight_free():
    """open_clip's own configs, no weights: one image, one text."""
    for name in ("ViT-B-32", "RN50"):
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=None)
        tw = two_tower(model.eval(), open_clip.get_tokenizer(name))
        texts = tw.encode_text(["a photo of a cat"])
        maps = LayerCGRAM(tw.image_model, tw.default_layer, metric=tw.metric).attribute(
            torch.rand(1, 3, 224, 224), references=texts
        )
        assert maps.shape == (1, 1, 7, 7) and maps.abs().sum() > 0
        sfam = LayerSFAM(tw.image_model, tw.default_layer, metric="cosine")
        assert sfam.attribute(
            torch.rand(1, 3, 224, 224), torch.rand(1, 3, 224, 224)
        ).shape == (1, 1, 7, 7)


# ------------------------------------------------------------- the text ---
def test_open_clip_tokens_truncation_and_empty_text():
    tw = tower("vit")
    ids = tw.tokenize(["a photo of a cat"])
    assert ids.shape == (1, 16) and ids.dtype == torch.long
    assert tw.tokens(ids) == [
        ["<start_of_text>", "a", "photo", "of", "a", "cat", "<end_of_text>"]
    ]
    assert set(tw.special_token_ids) >= {49406, 49407, tw.pad_token_id}
    long = " ".join(["cat"] * 40)
    with pytest.warns(UserWarning, match="cat cat.*truncated"):
        cut = tw.tokenize([long])
    assert cut.shape == (1, 16) and int(cut[0, -1]) == 49407  # end token kept
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        tw.tokenize(["a cat", "  "])


def test_hugging_face_tokenizer_is_the_users():
    tw = tower("clip")
    ids = tw.tokenize(["a red circle"])
    assert ids[0, :5].tolist() == [2, 4 + WORDS.index("a"), 9, 11, 3]
    assert tw.tokens(ids) == [["<s>", "a", "red", "circle", "</s>"]]
    assert tw.pad_token_id == 0 and {0, 2, 3} <= set(tw.special_token_ids)
    with pytest.raises(ValueError, match="tokenizer"):
        two_tower(hf_model("clip")).tokenize(["a cat"])  # none given
    siglip_like = hf_tokenizer()
    siglip_like.pad_token = "</s>"  # SigLIP pads with its end token
    tw = two_tower(hf_model("siglip"), siglip_like)
    ids = tw.tokenize(["a cat"])
    assert ids[0, 3:].eq(3).all()
    assert tw.tokens(ids) == [["<s>", "a", "cat", "</s>"]]


def test_a_tokenizer_of_another_model_is_refused():
    with pytest.raises(ValueError, match="tokenizer"):
        two_tower(hf_model("clip", vocab=8), hf_tokenizer())  # 13 tokens > 8
    tw = tower("clip")
    with pytest.raises(ValueError, match="tokenizer does not match"):
        tw.encode_text(torch.zeros(1, 20, dtype=torch.long))  # context 16
    with pytest.raises(ValueError, match="vocabulary"):
        tw.encode_text(torch.full((1, 16), 500, dtype=torch.long))
    with pytest.raises(TypeError, match="tokenizer"):
        two_tower(open_clip_model("vit"), tokenizer=object())
    with pytest.raises(ValueError, match="context of 77 tokens"):
        two_tower(open_clip_model("vit"), open_clip.get_tokenizer("ViT-B-32"))
    with pytest.raises(ValueError, match="context of 12 tokens"):
        two_tower(hf_model("siglip"), hf_tokenizer(context=12))


def test_bad_embeddings_name_the_argument():
    tw = tower("vit")
    img = tw.encode_image(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="text_emb has width"):
        tw.score(img, torch.rand(3, 8))
    with pytest.raises(ValueError, match="text_emb is on"):
        tw.score(img, torch.rand(3, 16, device="meta"))
    method = LayerCGRAM(tw.image_model, tw.default_layer, metric=tw.metric)
    with pytest.raises(ValueError, match="references have width 8"):
        method.attribute(torch.rand(1, 3, 32, 32), references=torch.rand(1, 8))
    with pytest.raises(TypeError, match="two_tower reads"):
        two_tower(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kind", ["vit", "siglip"])
def test_layer_grad_cam_through_similarity_target_on_a_vit_block(kind):
    """A token layer: LayerGradCam raises naming the fix; on target.grid(layer)
    it returns the grid map, equal to LayerCGRAM against the references."""
    from captum.attr import LayerGradCam

    from captum_sfam import SimilarityTarget

    tw = tower(kind)
    texts = tw.encode_text(["a cat", "a dog"])
    target = SimilarityTarget(tw.image_model, texts, metric=tw.metric)
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"target.grid\(layer\).*tokens_to_grid"):
        LayerGradCam(target, tw.blocks[-1]).attribute(x, target=0)
    maps = LayerGradCam(target, target.grid(tw.default_layer)).attribute(x, target=1)
    cgram = LayerCGRAM(tw.image_model, tw.default_layer, metric=tw.metric)
    expected = cgram.attribute(x, references=texts, target=1)
    torch.testing.assert_close(maps.detach(), expected, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(target(x), tw.score(tw.encode_image(x), texts))
    assert all(not m._forward_hooks for m in tw.image_model.modules())
    with pytest.raises(ValueError, match="references have width 4"):
        SimilarityTarget(tw.image_model, torch.rand(2, 4))(x)


def test_open_clip_timm_tower_siglip_style():
    """open_clip's CustomTextCLIP with a timm trunk pooled by an attention
    head (the SigLIP layout): trunk blocks, prefix tokens and patch size read,
    the model's own score with its bias."""
    from captum_sfam._engine.model import patch_size, prefix_tokens

    torch.manual_seed(0)
    vision = CLIPVisionCfg(
        timm_model_name="vit_tiny_patch16_224", timm_model_pretrained=False,
        timm_pool="map", timm_proj="none", image_size=224,
    )  # fmt: skip
    text = CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1)
    model = open_clip.CustomTextCLIP(
        embed_dim=192, vision_cfg=vision, text_cfg=text, init_logit_bias=-10
    ).eval()
    assert prefix_tokens(model.visual) == model.visual.trunk.num_prefix_tokens
    assert patch_size(model) == (16, 16)
    tw = two_tower(model)
    assert tw.default_layer is model.visual.trunk.blocks[-1] and tw.logit_bias == -10
    x, ids = torch.rand(1, 3, 224, 224), tw.tokenize(["a cat", "a dog"])
    with torch.no_grad():
        image, texts, scale, bias = model(x, ids)
    torch.testing.assert_close(tw.score(image, texts), scale * image @ texts.T + bias)
    maps = LayerCGRAM(tw.image_model, tw.default_layer, metric=tw.metric).attribute(
        x, references=texts, target=1
    )
    assert maps.shape == (1, 1, 14, 14) and maps.abs().sum() > 0
