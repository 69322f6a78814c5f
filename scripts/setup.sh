#!/usr/bin/env bash
# Make this machine ready for minicontainer: Debian packages, .venv, the busybox image.
# Shared by `make setup`, the Vagrantfile and CI. Idempotent: when nothing is missing
# it only checks, in a few seconds. `scripts/setup.sh bench` also installs crun, runc
# and umoci (`oci`: and Go, and builds the runtime-tools suite); `scripts/setup.sh test` what only the test suite needs (a
# browser, vagrant, umoci and htpasswd for the registry's tests, a pinned reveal.js for
# tests/test_slides.py); `scripts/setup.sh slides` the pinned reveal.js for `make slides`;
# `scripts/setup.sh image` mmdebstrap, runc and umoci for `make image` and `make test-image`.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "setup: $*" >&2; exit 1; }

# Refuse early, before anything is installed, when this cannot work.
[ "$(uname -s)" = Linux ] ||
  fail "minicontainer needs a Linux kernel: on macOS or Windows run 'vagrant up' (see README)"
[ "$(id -u)" = 0 ] || fail "run as root: sudo make ${MAKE_TARGET:-setup}"
command -v apt-get >/dev/null ||
  fail "no apt-get: install static busybox, python3 >= 3.11 with venv and iproute2 by hand, or use the Vagrant VM"

case "$(uname -m)" in
  x86_64) qemu=qemu-system-x86 ;;
  aarch64) qemu=qemu-system-arm ;;
  *) fail "unsupported CPU $(uname -m): use the Vagrant VM" ;;
esac
# The images lesson (06) starts a real registry on 127.0.0.1 and pushes to it with skopeo.
packages="busybox-static python3 python3-venv iproute2 util-linux iptables nftables zstd libseccomp2 $qemu docker-registry skopeo gcc libc6-dev"
[ "${1:-}" = bench ] && packages="$packages crun runc umoci"
# make test-oci: the other runtimes, umoci, and Go with the libraries the runtime-tools
# validation suite imports (its own programs are not in Debian: third_party/runtime-tools),
# perl for `prove`, which reads the suite's TAP.
# (runtime-tools' library package brings runtime-spec, urfave-cli, logrus, gocapability,
# selinux, x/sys and the rest; uuid and mountinfo are the suite's own imports.)
suite_go="golang-go golang-github-opencontainers-runtime-tools-dev golang-github-google-uuid-dev golang-github-moby-sys-dev"
[ "${1:-}" = oci ] && packages="$packages crun runc umoci perl patch $suite_go"
[ "${1:-}" = image ] && packages="$packages mmdebstrap runc umoci"   # make image, test-image
[ "${1:-}" = test ] && packages="$packages chromium vagrant vagrant-libvirt tmux umoci apache2-utils runc crun"
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  # Where systemd runs, the package starts a registry on every address's port 5000: the
  # tests start their own on 127.0.0.1, so the one we just installed is stopped again.
  case " $missing " in *" docker-registry "*)
    command -v systemctl >/dev/null && systemctl disable --now docker-registry 2>/dev/null || true ;;
  esac
fi

python=${MINICONTAINER_PYTHON:-/usr/bin/python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  fail "Python >= 3.11 is needed, $python is $("$python" -V 2>&1): use the Vagrant VM (Ubuntu 24.04)"

# The stamp is written last: an interrupted install is simply done again next time.
stamp=.venv/.installed
if [ ! -f "$stamp" ]; then
  echo "setup: creating .venv (JupyterLab and friends: a minute or two)"
  "$python" -m venv --clear .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi

# JupyterLab's "get notified about news?" popup covers the first notebook, and the
# answer would fetch from the internet: settled for the lab, as an admin override.
mkdir -p .venv/share/jupyter/lab/settings
printf '%s\n' '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
  > .venv/share/jupyter/lab/settings/overrides.json

# Byte-compile the package even where PYTHONDONTWRITEBYTECODE is set: the CLI starts faster.
.venv/bin/python -m compileall -q minicontainer
.venv/bin/python -c 'from minicontainer.rootfs import default_rootfs; print("setup: image", default_rootfs())'
# The same tree as an ordinary image in the store, busybox:latest (again only if it changed).
.venv/bin/python -c 'from minicontainer.images.store import busybox_image; print("setup: busybox:latest", busybox_image().digest)'
.venv/bin/python -c 'from minicontainer.security import seccomp_program; seccomp_program(); print("setup: seccomp filter compiled")'
# The monitor a detached container keeps on the host, in C (minicontainer/monitor.py
# says why); static, so no loader is looked up by path. Without it, a Python waiter.
lib=${MINICONTAINER_CACHE:-/var/cache/minicontainer}/lib
if [ ! -x "$lib/mc-monitor" ] || [ minicontainer/monitor.c -nt "$lib/mc-monitor" ]; then
  mkdir -p "$lib"
  if gcc -static -O2 -Wall -o "$lib/mc-monitor.new" minicontainer/monitor.c; then
    mv "$lib/mc-monitor.new" "$lib/mc-monitor" && echo "setup: monitor built, $lib/mc-monitor"
  else
    echo "setup: could not build the monitor: detached containers keep a Python waiter" >&2
  fi
fi
# The VM's kernel: the distribution's package, unpacked into the cache (not installed).
if ! .venv/bin/python -c 'import sys; from minicontainer.vm.kernel import cached_kernel; sys.exit(not cached_kernel())'; then
  apt-get update -qq     # the package is looked up in apt's lists
  .venv/bin/python -c 'from minicontainer.vm.kernel import fetch_kernel; print("setup: VM kernel", fetch_kernel().release)'
fi
# Which QEMU machine boots fastest here: measured once (about 10 s), then remembered.
.venv/bin/python -c 'from minicontainer.vm import kernel, machine, qemu; print("setup: VM machine", machine.choose_machine(kernel.find_kernel(), qemu.accelerator()[0]))'
# The other CPU's busybox and qemu-user, for the architecture lesson (unpacked, not installed).
.venv/bin/python -c 'from minicontainer.binfmt import fetch_foreign; fetch_foreign()' ||
  { apt-get update -qq; .venv/bin/python -c 'from minicontainer.binfmt import fetch_foreign; fetch_foreign()'; }

# The runtime-tools validation suite (make test-oci), built offline from the files in
# third_party/runtime-tools and Debian's Go packages (about a minute on 2 cores), again
# only when those files changed.
if [ "${1:-}" = oci ]; then
  suite=${MINICONTAINER_CACHE:-/var/cache/minicontainer}/runtime-tools
  if [ ! -f "$suite/COMMIT" ] || [ -n "$(find third_party/runtime-tools -newer "$suite/COMMIT" ! -name README.md)" ]; then
    echo "setup: building the runtime-tools validation suite (about a minute)"
    bash third_party/runtime-tools/build.sh "$suite"
    echo "setup: runtime-tools suite $(cat "$suite/COMMIT") in $suite"
  fi
fi

# reveal.js for offline slides: the npm package, pinned and checked, unpacked into the
# cache (not installed: nothing of it runs here, a browser loads it beside the slides).
if [ "${1:-}" = slides ] || [ "${1:-}" = test ]; then
  reveal_version=5.2.1   # as minicontainer/course/slides.py's REVEAL_VERSION
  reveal_sha256=359b575dd51bbda32f89b2fd4c7dc46ad7389a805572158916c29252f7a27333
  reveal_dir=${MINICONTAINER_CACHE:-/var/cache/minicontainer}/reveal.js-$reveal_version
  if [ ! -f "$reveal_dir/package/dist/reveal.js" ]; then
    rm -rf "$reveal_dir.partial" && mkdir -p "$reveal_dir.partial"
    # The npm registry's tarball, fetched as npm would (no node or npm needed for it).
    .venv/bin/python -c 'import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])' \
      "https://registry.npmjs.org/reveal.js/-/reveal.js-$reveal_version.tgz" \
      "$reveal_dir.partial/reveal.js-$reveal_version.tgz"
    echo "$reveal_sha256  $reveal_dir.partial/reveal.js-$reveal_version.tgz" | sha256sum -c --quiet ||
      fail "reveal.js $reveal_version from npm is not the pinned one"
    tar -xzf "$reveal_dir.partial/reveal.js-$reveal_version.tgz" -C "$reveal_dir.partial" --no-same-owner
    rm -rf "$reveal_dir" && mv "$reveal_dir.partial" "$reveal_dir"
    echo "setup: reveal.js $reveal_version in $reveal_dir"
  fi
fi
