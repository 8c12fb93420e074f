#!/usr/bin/env python3
"""Golden diffusers state-dict names and shapes for the tiny parity config A (dev tool; CI does not run it).

Writes Tests/HVCheckpointTests/Fixtures/diffusers_names_a.json: a list of [name, shape] for every
entry of diffusers' `HunyuanVideoTransformer3DModel(**config A).state_dict()`, in state-dict
order. The Swift test `DiffusersNamingTests` maps the official weights of
Tests/HVModelTests/Fixtures/dit_parity_a.h5 to diffusers names and must produce exactly this set.

    /work/venv/bin/python scripts/dev/make_diffusers_names.py     # from the repo root
"""

import json
import os
import sys

from diffusers import HunyuanVideoTransformer3DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_dit_fixtures import CONFIGS, REPO  # noqa: E402  (config A's diffusers arguments)

OUT = os.path.join(REPO, "Tests", "HVCheckpointTests", "Fixtures", "diffusers_names_a.json")


def main():
    model = HunyuanVideoTransformer3DModel(**CONFIGS["a"]["diffusers"])
    names = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(e) for e in names) + "\n]\n")
    print(f"wrote {len(names)} names to {os.path.relpath(OUT, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
