"""Maps of every member on fixed pairs, to compare two versions of the code.

Runs every registry member (plain, with a contrast where it takes one, all
pairs for forward-only members, channel weights and point-to-point scores)
on real photos through the offline ImageNet EfficientNet-Lite0 (layer bn2)
and on a small random CNN (layer4 of a ResNet-18, euclidean and cosine), and
saves every result to one file. Run it in two checkouts and compare:

    python benchmarks/maps_equal.py --out /tmp/new.pt
    (cd ../old-checkout && python benchmarks/maps_equal.py --out /tmp/old.pt)
    python benchmarks/maps_equal.py --compare /tmp/old.pt /tmp/new.pt

Uses only the public API, so that it runs on both sides of a redesign.
"""

from __future__ import annotations

import argparse
from typing import Dict

import torch
import torchvision

from captum_sfam.demo.pretrained import efficientnet_lite0, preprocess, sample_images
from captum_sfam.methods import REGISTRY


def _member_outputs(
    name: str, model, layer, q, s, c, metric: str
) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for key, member in REGISTRY.items():
        if metric not in member.supported_metrics:
            continue
        kwargs = {"weighting": "product"} if key == "ram" else {}
        method = member.cls(model, layer, metric=metric, **kwargs)
        tag = f"{name}/{metric}/{key}"
        q_maps, s_maps = method.attribute(q, s, return_support_attributions=True)
        out[f"{tag}/query"], out[f"{tag}/support"] = q_maps, s_maps
        weights = method.channel_weights(q, s)
        out[f"{tag}/query_weights"], out[f"{tag}/shot_weights"] = weights
        out[f"{tag}/point_to_point"] = method.point_to_point(q[:1], s[:1])
        if key != "gradfam":
            out[f"{tag}/contrast"] = method.attribute(q, s, contrast=c)
        if member.forward_only:
            pairs = method.attribute_pairs(q, s, return_gallery_attributions=True)
            out[f"{tag}/pairs_query"], out[f"{tag}/pairs_gallery"] = pairs
    return out


def compute() -> Dict[str, torch.Tensor]:
    torch.manual_seed(0)
    out: Dict[str, torch.Tensor] = {}
    photos = sample_images()
    names = sorted(photos)
    images = torch.cat([preprocess(photos[n]) for n in names])
    net = efficientnet_lite0()
    q, s, c = images[:2], images[2:4], images[4:6]
    out.update(_member_outputs("lite0", net, net.bn2, q, s, c, "cosine"))
    resnet = torchvision.models.resnet18(weights=None).eval()
    resnet.fc = torch.nn.Identity()
    gen = torch.Generator().manual_seed(1)
    q, s, c = (torch.rand(n, 3, 64, 64, generator=gen) for n in (3, 2, 2))
    for metric in ("euclidean", "cosine"):
        out.update(_member_outputs("resnet18", resnet, resnet.layer4, q, s, c, metric))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="file to save the results to")
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        old, new = (torch.load(p, weights_only=True) for p in args.compare)
        missing = sorted(set(old) ^ set(new))
        worst = max(
            (float((old[k].double() - new[k].double()).abs().max()), k)
            for k in old
            if k in new
        )
        print(f"{len(old)} results compared; keys in one file only: {missing}")
        print(f"max abs difference {worst[0]:.3g} ({worst[1]})")
        return
    torch.save(compute(), args.out)


if __name__ == "__main__":
    main()
