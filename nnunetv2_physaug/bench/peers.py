"""Cost of the peers' batch augmentations per image on the CPU (one thread): GIN-IPA (4 layers, IPA mask),
RandConv (GIN with one layer, no IPA), global and local location-scale (4 labels), on a 112 x 112 image (the
half-width MyoPS plans' patch), 200 calls each after 10 warm-up calls. Last line: `ginipa_ms= randconv_ms=
gla_ms= lla_ms=` (milliseconds per image). What they add to a training step is this times the batch size;
`scripts/bench_real.py`'s cost table gives the seconds per epoch of whole trainings."""
import time

import torch

from nnunetv2_physaug.peers import gin_ipa, location_scale


def per_call_ms(fn, n: int = 200) -> float:
    for _ in range(10):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1000.0


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 112, 112)
    labels = (torch.rand(1, 112, 112) * 4).long()
    randconv = gin_ipa.GINIPASettings(n_layers=1, ipa=False)
    ms = {"ginipa": per_call_ms(lambda: gin_ipa.gin_ipa_image(image, g)),
          "randconv": per_call_ms(lambda: gin_ipa.gin_ipa_image(image, g, randconv)),
          "gla": per_call_ms(lambda: location_scale.global_location_scale(image, g)),
          "lla": per_call_ms(lambda: location_scale.local_location_scale(image, labels, g, n_labels=4))}
    print(" ".join(f"{k}_ms={v:.2f}" for k, v in ms.items()))


if __name__ == "__main__":
    main()
