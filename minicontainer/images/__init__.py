"""Images: what `docker run alpine` starts from, as files you can read.

An image is three kinds of JSON and tarballs, each named by its *digest* (the sha256 of
its bytes, so a name is also a checksum):

- the **manifest** names the other two by digest, size and media type:
  `{"config": {"digest": "sha256:…"}, "layers": [{"digest": "sha256:…"}, …]}`;
- the **config** says how to run it (`Cmd`, `Entrypoint`, `Env`, `WorkingDir`,
  `User`) and lists each layer's uncompressed digest (`rootfs.diff_ids`);
- the **layers** are tarballs (usually gzip'd), applied in order, bottom first: each
  holds the files its step added or changed. A deletion is a *whiteout*, an empty
  `.wh.NAME` file meaning "NAME below is gone"; `.wh..wh..opq` makes a directory
  opaque (nothing below it shows through).

A tag (`alpine:3.19`) only points at a manifest; a registry serves manifests and blobs
over HTTP (the OCI distribution API); an image index (a "manifest list") points at one
manifest per platform (linux/amd64, linux/arm64, ...).

A container's root is the layers stacked by overlayfs (rootfs.Overlay: each unpacked
layer a lowerdir, read-only and shared; its own writable upper on top), so ten
containers of one image store its files once.

Read in this order:
  reference.py  `alpine` → docker.io/library/alpine:latest (Docker's defaults)
  layers.py     a layer tarball → a directory for overlayfs: whiteouts, and the
                checks that keep a hostile tarball inside its directory
  archives.py   `docker save` tarballs and OCI layouts; a directory made an image
  store.py      blobs by digest, layers unpacked once, tags, prune; Store().image(ref)
  commands.py   Docker's image commands over the store: images, tag, rmi, inspect,
                prune, save, import (IDs, and the rules about containers)
"""
