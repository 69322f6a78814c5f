"""Pull + unpack of a multi-layer image from a registry on 127.0.0.1: minicontainer's
`pull` into a fresh store (every blob hashed, every layer unpacked for overlayfs)
beside `skopeo copy docker://… oci:DIR` + `umoci unpack` of the same image, as a
ratio of medians; then start-to-exit of `/bin/true` in a container of the pulled
image (its layers stacked by overlayfs) beside the busybox rootfs and the one-layer
busybox image.

    make bench          # or: .venv/bin/python bench/images.py --runs 9

The image is the busybox layer and LAYERS more, each FILES files of FILE_KIB KiB (half
random bytes, half text, so gzip has something to do), built here and pushed with
skopeo (which gzips it): no internet. Runs alternate between the two sides, so drift
hits both alike. Not quite the same work: umoci also writes an mtree listing of the
tree (for a later repack) and a runtime config.json; skopeo's copy is two processes.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minicontainer import run
from minicontainer.course import imagelab
from minicontainer.images import registry
from minicontainer.images.store import Store, busybox_image

LAYERS, FILES, FILE_KIB = 4, 16, 256


def build_image(store: Store, work: Path) -> str:
    """busybox and LAYERS layers of files on top, in `store` as bench:1."""
    busybox_image(store)
    base = "busybox"
    for number in range(LAYERS):
        tree = work / f"layer-{number}"
        (tree / "data" / str(number)).mkdir(parents=True)
        for file in range(FILES):
            half = FILE_KIB * 512
            text = (f"layer {number} file {file}\n" * (half // 20))[:half].encode()
            (tree / "data" / str(number) / f"f{file}").write_bytes(os.urandom(half) + text)
        name = "bench:1" if number == LAYERS - 1 else f"bench-{number}:1"
        imagelab.add_layer(store, base, tree, name, f"layer {number}")
        base = name
    return "bench:1"


def ours(reference: str, work: Path) -> float:
    """Seconds to pull `reference` into an empty store and unpack its layers."""
    store = Store(work / "ours")
    started = time.perf_counter()
    registry.pull(reference, store)
    store.image(reference)                      # unpacks each layer once
    elapsed = time.perf_counter() - started
    shutil.rmtree(work / "ours")
    return elapsed


def skopeo_umoci(reference: str, work: Path) -> float:
    """Seconds for `skopeo copy` into an empty OCI layout, then `umoci unpack`."""
    layout, bundle = work / "layout", work / "bundle"
    started = time.perf_counter()
    imagelab.skopeo(["copy", "--src-tls-verify=false", f"docker://{reference}",
                     f"oci:{layout}:bench"], work)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:bench", str(bundle)],
                   check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    shutil.rmtree(layout)
    shutil.rmtree(bundle)
    return elapsed


def time_true(**options) -> float:
    """Milliseconds from start to exit of /bin/true in a container."""
    started = time.perf_counter()
    result = run(["/bin/true"], **options)
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.stderr
    return elapsed * 1000


def describe(name: str, samples: list[float], unit: str) -> str:
    """One line: the median and the spread of `samples`."""
    return (f"  {name:44} median {statistics.median(samples):8.1f} {unit}  "
            f"(min {min(samples):.1f}, max {max(samples):.1f}, {len(samples)} runs)")


def main() -> int:
    """Build, push, then time both pulls and the three kinds of start."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="pulls per side")
    parser.add_argument("--starts", type=int, default=60, help="container starts per kind")
    args = parser.parse_args()
    for tool in (*imagelab.TOOLS, "umoci"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: run `make bench` (it installs it)")
    with tempfile.TemporaryDirectory() as tmp, imagelab.LocalRegistry() as lab:
        work, store = Path(tmp), Store(Path(tmp) / "images")
        name = build_image(store, work)
        reference = lab.push(store, name, "bench/layers:1")
        with registry.Registry(lab.address) as session:
            layers = session.manifest("bench/layers", "1").document["layers"]
        size = sum(layer["size"] for layer in layers)
        print(f"image: {LAYERS + 1} layers, {size / 2**20:.1f} MiB gzipped, from "
              f"{lab.address}", file=sys.stderr)
        pulls: dict[str, list[float]] = {"minicontainer pull + unpack": [],
                                         "skopeo copy + umoci unpack": []}
        timers = {"minicontainer pull + unpack": ours, "skopeo copy + umoci unpack": skopeo_umoci}
        for timer in timers.values():           # warm up: binaries, page cache
            timer(reference, work)
        for _ in range(args.runs):
            for side, timer in random.sample(list(timers.items()), len(timers)):
                pulls[side].append(timer(reference, work) * 1000)

        pulled = Store(work / "pulled")
        registry.pull(reference, pulled)
        kinds = {"busybox rootfs (one directory)": {},
                 "busybox image (1 layer)": {"image": busybox_image(store)},
                 f"pulled image ({LAYERS + 1} layers)": {"image": pulled.image(reference)}}
        starts: dict[str, list[float]] = {kind: [] for kind in kinds}
        for options in kinds.values():
            time_true(**options)
        for _ in range(args.starts):
            for kind, options in random.sample(list(kinds.items()), len(kinds)):
                starts[kind].append(time_true(**options))

    print("\npull + unpack of the same image from the same registry on 127.0.0.1:")
    for side, samples in pulls.items():
        print(describe(side, samples, "ms"))
    ratio = (statistics.median(pulls["minicontainer pull + unpack"])
             / statistics.median(pulls["skopeo copy + umoci unpack"]))
    print(f"  ratio of medians, minicontainer / (skopeo + umoci): {ratio:.2f}")
    print("\nstart-to-exit of /bin/true in a container:")
    for kind, samples in starts.items():
        print(describe(kind, samples, "ms"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
