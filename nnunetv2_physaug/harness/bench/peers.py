"""Cost of the peers' augmentations per image on the CPU (one thread), on a 112 x 112 image (the half-width
MyoPS plans' patch), ``--calls`` calls each after 10 warm-up calls:

- ``ginipa_views``: GIN-IPA as published, the three views of one image (three 4-layer GINs, one IPA mask with
  4 control cells across);
- ``ginipa_fork``: the fork's single IPA blend (two GINs, one mask); ``randconv``: one 1-layer GIN;
- ``slaug_pair``: SLAug's GLA and LLA images of one crop with 4 labels (mapped to [0, 1] and back);
- ``saliency``: SBF's saliency map of one image's input gradient (grid 18).

Last line: ``ginipa_views_ms= ginipa_fork_ms= randconv_ms= slaug_pair_ms= saliency_ms=`` (milliseconds per
image). These are the augmentations alone: what a step costs beyond them (GIN-IPA's network pass over three
times the batch, SLAug's two passes) is in the seconds per epoch of ``scripts/bench_real.py``'s cost table.
"""
from __future__ import annotations

import argparse
import time

import torch

from nnunetv2_physaug.peers import gin_ipa, location_scale


def per_call_ms(fn, n: int) -> float:
    for _ in range(10):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1000.0


def main(argv=None) -> None:
    from nnunetv2_physaug.cli.argtypes import positive_int

    p = argparse.ArgumentParser(prog="scripts/bench_peers.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=positive_int, default=200, help="timed calls per augmentation (default 200)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 112, 112)
    labels = (torch.rand(1, 112, 112) * 4).long()
    published = gin_ipa.GINIPASettings(spacing=gin_ipa.spacing_for_cells((112, 112), gin_ipa.PUBLISHED_IPA_CELLS))
    randconv = gin_ipa.GINIPASettings(n_layers=1, ipa=False)
    grad = torch.randn(1, 1, 112, 112)
    ms = {"ginipa_views": per_call_ms(lambda: gin_ipa.three_views(image, g, published), args.calls),
          "ginipa_fork": per_call_ms(lambda: gin_ipa.gin_ipa_image(image, g), args.calls),
          "randconv": per_call_ms(lambda: gin_ipa.gin_ipa_image(image, g, randconv), args.calls),
          "slaug_pair": per_call_ms(lambda: location_scale.gla_lla_pair(image, labels, g, n_labels=4), args.calls),
          "saliency": per_call_ms(lambda: location_scale.saliency_map(grad), args.calls)}
    print(" ".join(f"{k}_ms={v:.2f}" for k, v in ms.items()))


if __name__ == "__main__":
    main()
