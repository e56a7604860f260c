#!/usr/bin/env bash
# Builds the Debian package of baton with cargo-deb, installs it with dpkg, checks the installed
# binary (`baton --version`, `baton server --print-config` with the packaged config file) and
# removes it again. Run from anywhere; CI runs it after `cargo test` (.ci/run).
#
#   bash scripts/package-deb.sh          # build, install, check, remove
#   BATON_DEB_KEEP=1 bash scripts/package-deb.sh   # build only: leave target/debian/*.deb
#
# Needs dpkg (Debian, Ubuntu) and root for `dpkg -i`. Installs cargo-deb 3.8.0 if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

if ! cargo deb --version >/dev/null 2>&1; then
    cargo install --locked cargo-deb --version 3.8.0
fi

# The release binary, then man pages and completions from it (cargo-deb packages files, it
# does not run the program).
cargo build --release --locked -p baton-cli
baton=target/release/baton
out=target/package
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
"$baton" man "$out/man"
gzip -9 -n "$out"/man/*.1
"$baton" completions bash >"$out/completions/baton.bash"
"$baton" completions zsh >"$out/completions/_baton"
"$baton" completions fish >"$out/completions/baton.fish"

cargo deb --no-build -p baton-cli
deb="$(ls -t target/debian/baton_*.deb | head -n 1)"
echo "package-deb: built $deb"
if [ "${BATON_DEB_KEEP:-0}" = 1 ]; then
    exit 0
fi

if dpkg -s baton >/dev/null 2>&1; then
    echo "package-deb: FAILED: a baton package is installed already; not touching it" >&2
    exit 1
fi
remove() { dpkg --purge baton >/dev/null 2>&1 || true; }
trap remove EXIT
dpkg -i "$deb"

version="$(/usr/bin/baton --version)"
echo "package-deb: $version"
case "$version" in
    "baton $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1) (commit "*", built "*")") ;;
    *) echo "package-deb: FAILED: unexpected --version: $version" >&2; exit 1 ;;
esac
config="$(env -u BATON_CONFIG /usr/bin/baton server --config /etc/baton/baton.toml --print-config)"
grep -q '^listen = "127.0.0.1:7878"  # file$' <<<"$config" \
    || { echo "package-deb: FAILED: --print-config with the packaged file:"$'\n'"$config" >&2; exit 1; }
for path in /usr/lib/systemd/system/baton.service /usr/share/man/man1/baton.1.gz \
    /usr/share/man/man1/baton-server.1.gz /usr/share/bash-completion/completions/baton; do
    [ -e "$path" ] || { echo "package-deb: FAILED: $path is not installed" >&2; exit 1; }
done
if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze verify /usr/lib/systemd/system/baton.service
fi
echo "package-deb: installed, checked and removed $deb"
