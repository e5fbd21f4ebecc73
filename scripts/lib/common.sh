# Shared by scripts/run, scripts/test and .ci/run. Source it; do not run it.

# The repository's top folder, whatever the caller's working directory.
IDENTGATE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ensure_packages PACKAGE...: installs the Debian packages that are missing, with apt.
# Root installs directly; anyone else needs sudo.
ensure_packages() {
    local missing=()
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "missing packages ${missing[*]}: run as root, or install them with apt"
        sudo=(sudo)
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine has no package lists yet; refresh them once if an install fails.
    "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        "${sudo[@]}" apt-get update -q >/dev/null
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    } || die "apt-get could not install ${missing[*]}"
}

# ensure_swift: the Swift toolchain is not a Debian package; find it or say where to get it.
ensure_swift() {
    if ! command -v swift >/dev/null && [ -x /opt/swift/usr/bin/swift ]; then
        export PATH="/opt/swift/usr/bin:$PATH"
    fi
    command -v swift >/dev/null || die "swift not found: install Swift 6 (swift.org) and put it on PATH"
}

# What building identgate needs from Debian: libxcrypt's headers for crypt(3), libcap's
# for dropping capabilities, and MIT Kerberos' for GSS-API (RFC 1961).
BUILD_PACKAGES=(libcrypt-dev libcap-dev libkrb5-dev libpam0g-dev)

# The one way every script builds for release (scripts/run, scripts/package, the tests):
# the Swift runtime linked in. SwiftPM rebuilds every module when the flags differ from
# the last build's, so a script building without them threw away another's build (2 min
# on 2 cores, measured: scripts/test rebuilt the release twice).
RELEASE_BUILD=(-c release --static-swift-stdlib)
