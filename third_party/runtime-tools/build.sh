#!/usr/bin/env bash
# Build the runtime-tools validation suite into OUT, offline, from the files carried
# here and Debian 12's Go packages (README.md says which and why):
#
#     bash third_party/runtime-tools/build.sh OUT
#
# OUT then holds what the suite's programs expect in their working directory:
# runtimetest, rootfs-<arch>.tar.gz and validation/<name>/<name>.t.
# Go builds in GOPATH mode (no go.mod, no module proxy): our files come first on
# GOPATH, Debian's /usr/share/gocode second, so every import path we do not carry is
# Debian's. Built into OUT.partial and moved into place only when complete.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT}
commit=$(cat "$here/COMMIT")
debian=/usr/share/gocode/src/github.com/opencontainers

rm -rf "$out.partial"
mkdir -p "$out.partial"
gopath=$out.partial/gopath
ours=$gopath/src/github.com/opencontainers
mkdir -p "$ours/runtime-tools/cmd" "$ours/runtime-spec" "$gopath/src/github.com/mndrix"

# The suite itself (Debian packages only the library) and tap-go (not in Debian).
cp -r "$here/validation" "$ours/runtime-tools/"
cp -r "$here/cmd/runtimetest" "$ours/runtime-tools/cmd/"
cp -r "$here/tap-go" "$gopath/src/github.com/mndrix/"
# Debian's copies of the two packages whose behaviour changed before the commit,
# patched to the commit's (debian-12.patch: /dev without noexec, the default seccomp
# profile, the spec version written into config.json).
cp -r "$debian/runtime-tools/generate" "$ours/runtime-tools/"
cp -r "$debian/runtime-spec/specs-go" "$ours/runtime-spec/"
find "$ours" -name '*_test.go' -delete
patch --quiet -d "$ours" -p1 < "$here/debian-12.patch"

export GO111MODULE=off GOPROXY=off GOFLAGS=-trimpath GOPATH="$gopath:/usr/share/gocode" \
  GOCACHE="$out.partial/gocache"
cd "$ours/runtime-tools"
version="-X main.gitCommit=$commit -X main.version=$(cat "$here/VERSION")"
# runtimetest runs inside the suite's busybox root, so it is static (the upstream
# Makefile's flags). An empty build id, so that the same sources give the same bytes.
go build -tags "netgo osusergo" -ldflags "-extldflags -static -buildid= $version" \
  -o "$out.partial/runtimetest" ./cmd/runtimetest
# The 58 test programs in one go build (it builds on every core); -s -w leaves out the
# symbol table and DWARF, which nobody reads here: half the size, a faster link.
mkdir -p "$out.partial/bin"
go build -ldflags "-s -w -buildid= $version" -o "$out.partial/bin/" ./validation/...
for program in "$out.partial"/bin/*; do
  name=$(basename "$program")
  mkdir -p "$out.partial/validation/$name"
  mv "$program" "$out.partial/validation/$name/$name.t"
done
rmdir "$out.partial/bin"

# The bundles' root: upstream carries a 1.1 MB tarball of BusyBox 1.28; this is the same
# tree (its /etc/passwd and /etc/group, /bin/busybox and one link per applet) made from
# Debian's busybox-static, byte for byte the same every time.
root=$out.partial/rootfs
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys"
cp -r "$here/rootfs/etc" "$root/"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -c . |
  gzip -n > "$out.partial/rootfs-$(go env GOARCH).tar.gz"

rm -rf "$gopath" "$out.partial/gocache" "$root"
echo "$commit" > "$out.partial/COMMIT"
rm -rf "$out" && mv "$out.partial" "$out"
