#!/usr/bin/env bash
# Installs what the tests need, then runs every check and test of the project:
# formatting, clippy, unit tests, and the integration suites in tests/ (real TLS server on
# 127.0.0.1, hostile proxy, SIGKILL crash rounds, slow consumers, the CLI as a process),
# a short fuzzing run (tests/fuzz/run.sh), then the packages (tests/packaging.sh).
#
#   bash tests/run.sh
#
# Under CI (CI=true) a missing tool is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
fail() { echo "tests/run.sh: $*" >&2; exit 1; }

# --- what the tests need -----------------------------------------------------------
command -v cargo >/dev/null || fail "cargo is required (install Rust with rustup)"
if ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add rustfmt || fail "rustfmt is missing and could not be installed"
fi
if ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add clippy || fail "clippy is missing and could not be installed"
fi
# tests/browser.rs drives Debian's Chromium through chromedriver (WebDriver).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing chromium and chromium-driver"
    apt-get update || fail "apt-get update failed"
    export TESTS_APT_UPDATED=1 # tests/packaging.sh then installs without updating again
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver \
      || fail "could not install chromium and chromium-driver"
  elif [ "${CI:-}" = true ]; then
    fail "chromium and chromium-driver are missing and cannot be installed here (needs root and apt-get)"
  else
    echo "tests/run.sh: chromium/chromedriver missing and not installable here: browser tests will be skipped" >&2
  fi
fi

# --- checks ------------------------------------------------------------------------
say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

say "build"
cargo build --all-targets --locked

say "tests"
# Test binaries run one after another; tests inside each run in parallel.
cargo test --all-targets --locked -- --test-threads="${SUREPUSH_TEST_THREADS:-4}"

say "fuzz (short run)"
# Coverage-guided fuzzing of the publish body, subscription query, ids, topic patterns,
# token text, SSE encoder, backup reader and JSON check, from their seeds: a crash fails
# the run. The long run: bash tests/fuzz/run.sh --runs 10000000 (figures in BENCHMARKS.md).
bash tests/fuzz/run.sh --seconds "${SUREPUSH_FUZZ_SECONDS:-10}"

say "packages"
# Builds the .deb and .rpm from a release build (packaging/build.sh) and checks them: files,
# modes, conffiles, scripts, the unit, man pages, and the packaged binary run from a
# temporary root (init, serve, SIGHUP, SIGTERM). Installs rpm/systemd/man-db if missing.
bash tests/packaging.sh
