# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 — images: what `docker run alpine` starts from
#
# Until now every container ran one directory, the busybox tree. `docker run` starts
# from an *image* instead, pulled from a registry. What is that, on disk and on the wire?
#
# **Predict:** "an image is only a directory tree". True or false?
#
# <details><summary>Answer</summary>
#
# True of a *root filesystem* (what a container sees as `/`), not of an OCI image. An
# image is a few files named by their sha256 digest: a **manifest** (JSON: which config,
# which layers), a **config** (JSON: the command, the environment, the CPU it is for) and
# **layers** (tarballs of changes, applied in order). The directory tree only exists once
# the layers are stacked, by overlayfs, for a container.
# </details>
#
# This lesson keeps its images in a store of its own, in a temporary directory
# (`minicontainer/images/store.py`; yours is `/var/lib/minicontainer/images`). First, the
# busybox tree as an image:

# %%
import hashlib
import json
import subprocess
from pathlib import Path

from minicontainer import Container
from minicontainer.cleanup import cleanup
from minicontainer.course import imagelab, plots
from minicontainer.images.store import Store, busybox_image

cleanup()                              # what a killed earlier run left (a dead owner's only)
work = imagelab.scratch()              # a temporary directory; an earlier run's goes
store = Store(Path(work.name) / "images")
busybox = busybox_image(store)
print(busybox.name, "\n  manifest", busybox.digest)

# %% [markdown]
# ## A manifest and a config, read by hand
# Every part of an image is a *blob* in `blobs/sha256/`, its file name the sha256 of its
# bytes. The manifest is the one blob a tag points at:

# %%
manifest_bytes = store.blob_path(busybox.digest).read_bytes()
manifest = json.loads(manifest_bytes)
print(json.dumps(manifest, indent=2))

# %% [markdown]
# **Predict:** the manifest's digest is the sha256 of *what*, exactly?
#
# <details><summary>Answer</summary>
#
# Of its bytes as stored and sent, not of the JSON's meaning: change one space and it is
# another manifest. So a digest is a name and a checksum at once, and a manifest's digest
# vouches for its config and layers too, whose digests it holds.
# </details>

# %%
print("sha256 of the manifest's bytes:", "sha256:" + hashlib.sha256(manifest_bytes).hexdigest())
print("its name in the store:         ", busybox.digest)
config = json.loads(store.blob_path(manifest["config"]["digest"]).read_bytes())
print(json.dumps(config, indent=2))

# %% [markdown]
# The config says how to run the image (`Cmd`, `Env`; Docker images add `Entrypoint`,
# `WorkingDir`, `User`), for which CPU, and lists each layer's *uncompressed* digest
# (`rootfs.diff_ids`): the manifest names the blobs as sent, the config the trees.
#
# ## Layers are tarballs
# A layer is an ordinary tar archive: `tar` itself lists the busybox layer.

# %%
def tar_tv(blob: Path) -> list[str]:
    """The archive's entries as `tar tv` lists them (mode, owner, size, date, name)."""
    return subprocess.run(["tar", "tvf", blob, "--numeric-owner"], capture_output=True,
                          text=True, check=True).stdout.splitlines()


layer_blob = store.blob_path(manifest["layers"][0]["digest"])
entries = tar_tv(layer_blob)
print("\n".join(entries[:12]))
print(f"... {len(entries)} entries, {layer_blob.stat().st_size:,} bytes")

# %% [markdown]
# ## Whiteouts: how a layer deletes a file
# A layer only *adds*: a tarball has no entry for "gone". So a deletion is written as an
# empty file named `.wh.NAME` (a *whiteout*: NAME from the layers below is deleted). A
# second layer on busybox, made here from a directory: it adds `/etc/motd` and deletes
# `/etc/hostname`.

# %%
top = Path(work.name) / "top-layer"
(top / "etc").mkdir(parents=True, exist_ok=True)
(top / "etc" / "motd").write_text("hello from the second layer\n")
(top / "etc" / ".wh.hostname").touch()          # an empty file: the whiteout
lesson = imagelab.add_layer(store, "busybox", top, "lesson:1", "add /etc/motd, delete /etc/hostname")
lesson_manifest = store.read_json(lesson.digest)
print("\n".join(tar_tv(store.blob_path(lesson_manifest["layers"][1]["digest"]))))

# %% [markdown]
# overlayfs, which stacks the layers for a container, does not read aufs's `.wh.` names:
# it has a mark of its own, a *character device numbered 0:0*. The store converts
# whiteouts when it unpacks a layer (`minicontainer/images/layers.py`), as Docker's
# overlay2 driver does while it reads the tarball. On the host, the unpacked top layer:

# %%
top_unpacked = lesson.layers[1]
print(subprocess.run(["ls", "-l", top_unpacked / "etc"], capture_output=True, text=True).stdout)

# %% [markdown]
# `c--------- 0, 0 hostname`: a device with no driver behind it (major 0), which
# overlayfs hides from the merged tree together with whatever the layers below have by
# that name. (A directory emptied by a layer is *opaque* instead: `.wh..wh..opq` in the
# tar, the xattr `trusted.overlay.opaque=y` on the unpacked directory.)
#
# **Predict:** in a container of `lesson:1`, will `ls /etc` show `hostname`? `motd`?
#
# <details><summary>Answer</summary>
#
# `motd` yes, `hostname` no: the top layer's 0:0 device hides the busybox layer's file.
# The file is still in the busybox layer on disk, untouched, for every other image using it.
# </details>

# %%
with Container("ls /etc; cat /etc/motd", image=lesson) as c:
    c.start()
    print(c.wait().stdout)

# %% [markdown]
# ## Copy-on-write: two containers, one copy of the layers
# Two containers of `lesson:1`. Each gets an empty writable layer of its own (overlayfs's
# *upper* directory); the image's layers are their shared, read-only *lowers*.
#
# **Predict:** container A appends a line to `/etc/motd` and writes 512 KiB of logs.
# Where does each write land on the host, what does B see, and what happens to the
# image's layer?
#
# <details><summary>Answer</summary>
#
# In A's upper directory: overlayfs first *copies up* the whole file from the lower layer,
# then writes the copy. B still reads the image's `/etc/motd`; the layer is never changed.
# </details>

# %%
with Container(["sleep", "60"], image=lesson) as a, Container(["sleep", "60"], image=lesson) as b:
    a.start()
    b.start()
    a.exec("echo changed by A >> /etc/motd; "
           "dd if=/dev/urandom of=/var/log.bin bs=512K count=1 2>/dev/null")
    b.exec("echo B > /tmp/b.txt")
    print("A reads:", a.exec("cat /etc/motd").stdout.strip().replace("\n", " | "))
    print("B reads:", b.exec("cat /etc/motd").stdout.strip())
    print("the layer's /etc/motd:", (top_unpacked / "etc" / "motd").read_text().strip())
    print("\nA's upper directory, on the host:")
    print(subprocess.run(["find", a.data / "upper"], capture_output=True, text=True).stdout)
    disk = {"image layers (once, shared)": sum(imagelab.disk_use(p) for p in lesson.layers),
            "A's upper": imagelab.disk_use(a.data / "upper"),
            "B's upper": imagelab.disk_use(b.data / "upper")}

plots.layer_sharing_figure(disk)

# %% [markdown]
# Ten containers of one image store its files once, and start without copying them:
# starting a container is making three empty directories and one mount. (A VM's disk
# image is usually a full copy each, or a copy-on-write file per VM: `qcow2`'s backing
# files are the same idea, one level down, in blocks rather than files.)
#
# ## Pull, step by step, from a registry on this machine
# A registry serves manifests and blobs over HTTP (the OCI distribution API). Here the
# real one, the CNCF distribution registry Docker Hub grew from, on 127.0.0.1 (no
# internet needed). skopeo pushes `lesson:1` to it, as `docker push` would:

# %%
lab = imagelab.LocalRegistry().start()   # stops the one an earlier run of this cell started
reference = lab.push(store, "lesson:1", "lesson/whiteout:1")
print("pushed:", reference)

# %% [markdown]
# `minicontainer pull` takes the steps `minicontainer/images/registry.py` lists, each
# with the curl command that does it. Every HTTP request below is printed as it is made.
#
# **Step 1:** is this a v2 registry, and may we come in? (Docker Hub answers 401 and
# where to get a token: step 2. This registry asks for no login.) **Step 3:** the
# manifest, by tag.

# %%
from minicontainer.images import registry

session = imagelab.show_requests(registry.Registry(lab.address))
session.ping()
pulled_manifest = session.manifest("lesson/whiteout", "1")
print(json.dumps(pulled_manifest.document, indent=2))

# %% [markdown]
# **Predict:** the layer digests above differ from the ones in our store. Why?
#
# <details><summary>Answer</summary>
#
# skopeo gzipped our plain tar layers on the way in (registries serve compressed layers),
# and a digest names bytes: other bytes, other digest. The config's `diff_ids` still
# name the uncompressed trees, which did not change: the config keeps its digest.
# </details>

# %%
def short(descriptor: dict) -> str:
    """A descriptor in one line: its digest (abridged), its size, what it is."""
    kind = descriptor["mediaType"].rsplit(".", 1)[1]      # tar, tar+gzip, v1+json
    return f"{descriptor['digest'][7:19]}… {descriptor['size']:>9,} bytes, {kind:8}"


for ours, theirs in zip(lesson_manifest["layers"], pulled_manifest.document["layers"],
                        strict=True):
    print("layer   ours:", short(ours), "  the registry's:", short(theirs))
print("config  ours:", short(lesson_manifest["config"]), "  the registry's:",
      short(pulled_manifest.document["config"]))

# %% [markdown]
# **Step 4:** each blob by its digest, hashed as it arrives and kept only if it matches.

# %%
pulled_config = session.config("lesson/whiteout", pulled_manifest.document["config"])
print("config verified:", len(pulled_config), "bytes\n")
for descriptor in pulled_manifest.document["layers"]:
    data = b"".join(session.layer("lesson/whiteout", descriptor, progress=None))
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    print(f"layer {descriptor['digest'][:19]}… {len(data):>9,} bytes: "
          f"{'verified' if got == descriptor['digest'] else 'MISMATCH'}")
session.client.close()

# %% [markdown]
# `registry.pull` does all of it (and takes this machine's image from an index of
# platforms, and logs in where asked) into a store, then a container runs the image:

# %%
pulled_store = Store(Path(work.name) / "pulled")
digest = registry.pull(reference, pulled_store)
print("pulled", reference, digest)
with Container("cat /etc/motd; ls /etc", image=pulled_store.image(reference)) as c:
    c.start()
    print(c.wait().stdout)

# %% [markdown]
# **Predict:** someone changes one byte of a layer in the registry's storage (a
# compromised mirror, a flipped bit). What does a pull do?
#
# <details><summary>Answer</summary>
#
# It refuses the layer: its bytes no longer hash to the digest the manifest promised.
# Nothing of it is kept, and no tag names half an image.
# </details>

# %%
from minicontainer.errors import DigestMismatch

top_layer = lab.blob_file(pulled_manifest.document["layers"][1]["digest"])
tampered = bytearray(top_layer.read_bytes())
tampered[-1] ^= 0xFF
top_layer.write_bytes(bytes(tampered))
fresh_store = Store(Path(work.name) / "fresh")
try:
    registry.pull(reference, fresh_store)
except DigestMismatch as refused:
    print("refused:", refused)
print("images in that store:", fresh_store.tags() or "none")
lab.stop()

# %% [markdown]
# ## The OCI bundle: what Docker hands to its runtime
# `docker run` does not make the container itself. The CLI asks the daemon, the daemon
# asks containerd, containerd starts a *shim* per container, and the shim runs an **OCI
# runtime** — runc, or crun — on a **bundle**: a directory holding `config.json` (the
# runtime spec: process, root, mounts, namespaces, limits, security) and the root
# filesystem. The runtime applies it with the very system calls of layers 1–5, starts
# the process and exits. Our layers speak the same contract (`minicontainer oci`,
# `minicontainer/oci.py`), and `minicontainer export-bundle busybox DIR` writes a
# bundle from an image (here from this lesson's store).
#
# **Predict, then run.** The same bundle is run by runc, written in Go by the OCI, and
# by our runtime, in Python. Which lines of the probe — hostname, pid, uid, effective
# capabilities, no_new_privs, seccomp mode — differ?
#
# <details><summary>Answer</summary>
#
# None: both read the same `config.json` and ask the same kernel for the same things,
# so the process inside cannot tell them apart. The runtimes differ in speed and in
# what they refuse (ours names any field of `config.json` it cannot honour), not in the
# container they make.
# </details>

# %%
from minicontainer import bundles

bundle = bundles.export_bundle("busybox:latest", Path(work.name) / "bundle", store)
config = json.loads((bundle / "config.json").read_text())
linux = config["linux"]
print("the bundle:", sorted(p.name for p in bundle.iterdir()))
print("ociVersion   ", config["ociVersion"])
print("process      ", config["process"]["args"], "as uid", config["process"]["user"]["uid"],
      "in", config["process"]["cwd"])
print("root         ", config["root"])
print("hostname     ", config["hostname"])
print("mounts       ", " ".join(m["destination"] for m in config["mounts"]))
print("namespaces   ", " ".join(n["type"] for n in linux["namespaces"]))
print("resources    ", linux["resources"])
print("capabilities ", len(config["process"]["capabilities"]["effective"]), "effective;",
      "noNewPrivileges", config["process"].get("noNewPrivileges"))
print("masked", len(linux["maskedPaths"]), "and read-only", len(linux["readonlyPaths"]),
      "paths; seccomp:", len(linux["seccomp"]["syscalls"]), "rules, default",
      linux["seccomp"]["defaultAction"])

# %%
import shutil
import sys
from itertools import zip_longest

PROBE = ('echo hostname=$(hostname); echo pid=$$; echo uid=$(id -u); '
         'grep -E "^(CapEff|NoNewPrivs|Seccomp):" /proc/self/status | tr -d "\t"')
config["process"]["args"] = ["sh", "-c", PROBE]
(bundle / "config.json").write_text(json.dumps(config, indent=1))


def run_bundle(runtime: list[str], name: str) -> list[str]:
    """`RUNTIME --root STATE run --bundle BUNDLE ID`: runc's command line, and ours."""
    state = Path(work.name) / f"state-{name}"      # each runtime's records, not the host's
    done = subprocess.run([*runtime, "--root", str(state), "run", "--bundle", str(bundle),
                           f"mc-oci-{name}"], capture_output=True, text=True, timeout=60)
    return done.stdout.splitlines() + [f"exit {done.returncode}"] + done.stderr.splitlines()


ours = run_bundle([sys.executable, "-m", "minicontainer", "oci"], "ours")
if shutil.which("runc"):
    theirs = run_bundle(["runc"], "runc")
else:
    print("runc is not installed here: `sudo apt-get install runc` (Debian, Ubuntu) or "
          "`sudo dnf install runc` (Fedora), then run this cell again.")
    theirs = ["-"] * len(ours)
print(f"{'runc':34}minicontainer oci")
for left, right in zip_longest(theirs, ours, fillvalue=""):
    print(f"{left:34}{right}{'' if left in (right, '-') else '   <- differs'}")

# %% [markdown]
# ## Where a runtime sits, and where a VM fits in
# Left: a container against a VM, layer by layer. Right: Docker's chain, from the CLI
# down to the kernel — every box above the runtime only passes a bundle along. That
# seam (the shim, and the runtime below it) is where the VM side plugs in: **Kata
# Containers** (its shim `containerd-shim-kata-v2`) and **Firecracker**
# (firecracker-containerd's shim) take the same bundle, boot a small VM with its own
# kernel (the VM of notebook 07, made fast) and start the container inside it.
# **gVisor**'s `runsc`, an OCI runtime like runc, puts a kernel of its own, written in
# Go, between the container and the host's. Docker above them does not change: `docker
# run --runtime=…` picks one.

# %%
plots.stack_figure()

# %% [markdown]
# ## What you know now
# - An image is a manifest, a config and layers, each a blob named by its sha256: the
#   manifest's digest vouches for all of it, wherever the bytes came from.
# - Layers are tarballs of changes; a deletion is a `.wh.` whiteout, which becomes
#   overlayfs's 0:0 device when unpacked. A container's root is the layers stacked by
#   overlayfs, read-only and shared, under an upper directory of its own: writes are
#   copied up there.
# - A pull is a handful of HTTP GETs; what makes it safe is the hashing, not the
#   connection.
# - Docker hands a runtime a bundle — `config.json` and a root filesystem — through a
#   small command line (create, start, state, kill, delete). runc is one such runtime,
#   `minicontainer oci` another; Kata and Firecracker are runtimes that boot a VM.
#
# ## Exercise 06
# `exercises/ex06_images.py`: turn a layer's whiteouts into overlayfs's marks, checked
# by mounting your layer under a real container.

# %%
from minicontainer.course.grade import grade

grade("06")
