#!/usr/bin/env bash
# Builds the .deb and the .rpm of surepush from one release build:
#
#   bash packaging/build.sh            # -> target/packages/surepush_<v>-1_<arch>.deb, surepush-<v>-1.<arch>.rpm
#
# 1. installs the pinned cargo-deb and cargo-generate-rpm unless ~/.cargo/bin has them,
# 2. `cargo build --release --locked --bin surepush` (the only compilation),
# 3. stages into target/packaging/: the packaged config (packaging/surepush.toml with
#    listen and data_dir of a server install), the man pages (from the release binary,
#    `surepush man`, gzipped) and the maintainer scripts (#COMMON# filled in),
# 4. `cargo deb --no-build` and `cargo generate-rpm` read [package.metadata.deb] and
#    [package.metadata.generate-rpm] of Cargo.toml, and this prints the sizes.
#
# `--skip-build` reuses the existing release binary.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
# The packaged listen address: every IPv4 address, port 443 (the unit grants
# CAP_NET_BIND_SERVICE). README-ops.md explains the choice and the alternatives.
PKG_LISTEN=0.0.0.0:443
PKG_DATA_DIR=/var/lib/surepush

say() { printf '\n== %s\n' "$*"; }
fail() { echo "packaging/build.sh: $*" >&2; exit 1; }

target="${CARGO_TARGET_DIR:-target}"
stage=target/packaging
out=target/packages

# --- tools ------------------------------------------------------------------------
# `cargo install` takes minutes (cargo-generate-rpm ~5.5 min on 2 cores): it runs only
# when the pinned version is missing; the binaries stay in ~/.cargo/bin for later runs.
ensure_tool() { # crate version subcommand
  local have
  have=$(cargo "$3" --version 2>/dev/null || true)
  if [[ "$have" != *"$2"* ]]; then
    say "installing $1 $2 (cargo install --locked; once per machine)"
    cargo install --locked "$1" --version "$2" || fail "cannot install $1 $2"
  fi
}
ensure_tool cargo-deb "$CARGO_DEB_VERSION" deb
ensure_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION" generate-rpm

# --- the one build -----------------------------------------------------------------
if [ "${1:-}" != --skip-build ]; then
  say "cargo build --release --bin surepush"
  cargo build --release --locked --bin surepush
fi
bin="$target/release/surepush"
[ -x "$bin" ] || fail "$bin is missing"

# --- staged files --------------------------------------------------------------------
say "staging $stage"
rm -rf "$stage" "$out"
mkdir -p "$stage/man" "$stage/deb" "$stage/rpm" "$out"

# The packaged config: the reference (every default, commented) with a server's listen
# address and data directory. Each replaced line must exist exactly once.
ref=packaging/surepush.toml
for line in 'listen = "127.0.0.1:8443"' 'data_dir = "./surepush-data"'; do
  [ "$(grep -cxF "$line" "$ref")" = 1 ] || fail "$ref: expected the line '$line' exactly once"
done
{
  echo "# surepush configuration, installed by the surepush package."
  echo "#"
  echo "# The package keeps your changes on upgrades (a conffile; rpm: config(noreplace))."
  echo "# Only listen and data_dir differ from the built-in defaults (127.0.0.1:8443 and"
  echo "# ./surepush-data). Apply changes with: systemctl restart surepush"
  echo "# Behind a reverse proxy on this machine, listen on 127.0.0.1:8443 instead;"
  echo "# \"[::]:443\" serves IPv6 as well (where the kernel has IPv6)."
  echo "#"
  sed -e "s|^listen = \"127.0.0.1:8443\"\$|listen = \"$PKG_LISTEN\"|" \
      -e "s|^data_dir = \"./surepush-data\"\$|data_dir = \"$PKG_DATA_DIR\"|" \
      -e '1{/^# surepush configuration\.$/d}' "$ref"
} > "$stage/surepush.toml"
env -u SUREPUSH_LISTEN -u SUREPUSH_DATA_DIR "$bin" print-config --config "$stage/surepush.toml" > "$stage/print-config.txt" \
  || fail "the packaged config does not load"
grep -qxF "listen = \"$PKG_LISTEN\"" "$stage/print-config.txt" || fail "packaged listen not applied"
grep -qxF "data_dir = \"$PKG_DATA_DIR\"" "$stage/print-config.txt" || fail "packaged data_dir not applied"

# Man pages from the release binary itself, gzipped without a timestamp (-n).
"$bin" man --out "$stage/man" > /dev/null
ls "$stage"/man/surepush.1 > /dev/null || fail "surepush man wrote no surepush.1"
gzip -9n "$stage"/man/*.1

# Maintainer scripts: #COMMON# becomes packaging/scripts/common.sh.
fill() { # template output mode
  awk -v common=packaging/scripts/common.sh '
    $0 == "#COMMON#" { while ((getline l < common) > 0) print l; close(common); next }
    { print }' "$1" > "$2"
  chmod "$3" "$2"
  if grep -qx '#COMMON#' "$2"; then fail "$2: #COMMON# not replaced"; fi
  sh -n "$2" || fail "$2: shell syntax error"
}
for s in postinst prerm postrm; do fill "packaging/deb/$s" "$stage/deb/$s" 755; done
for s in pre post preun postun; do fill "packaging/rpm/$s.sh" "$stage/rpm/$s.sh" 644; done

# --- packages ------------------------------------------------------------------------
say "cargo deb"
cargo deb --no-build --no-strip --output "$out/" || fail "cargo deb failed"
say "cargo generate-rpm"
cargo generate-rpm --output "$out/" || fail "cargo generate-rpm failed"

say "packages"
for p in "$out"/*.deb "$out"/*.rpm; do
  [ -f "$p" ] || fail "no package in $out"
  printf '%-60s %8s KiB\n' "$p" "$(( $(stat -c %s "$p") / 1024 ))"
done
