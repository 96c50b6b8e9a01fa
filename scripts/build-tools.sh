# Sourced by scripts/run.sh and scripts/test.sh: makes sure the tools the
# build needs besides Rust and a C compiler are there. libjpeg-turbo is
# built from source with its SIMD code, which takes cmake and nasm. HEIC and
# AVIF inputs are decoded by the system's libheif (with libde265 and dav1d),
# found with pkg-config: `ensure_libheif` installs both.
#
# When one is missing it is installed: with the system's package manager
# when this user may use it (root, or sudo without a password), else
# without root under the cache directory (cmake from PyPI, nasm unpacked
# from Debian's archive). When neither can work, the exact command to run
# is printed and the script stops.

NWS_TOOLS="${NWS_CACHE_DIR:-$HOME/.cache/nws-watermark}/tools"
CMAKE_FROM_PYPI="cmake==3.31.6"

ensure_build_tools() {
  mkdir -p "$NWS_TOOLS/bin"
  export PATH="$NWS_TOOLS/bin:$PATH"
  ensure_libheif || return 1
  ensure_libaom || return 1
  if command -v cmake >/dev/null && command -v nasm >/dev/null; then
    return 0
  fi
  local missing
  missing="$(for tool in cmake nasm; do command -v "$tool" >/dev/null || printf '%s ' "$tool"; done)"
  echo "==> installing the build tools libjpeg-turbo needs: $missing" >&2

  # shellcheck disable=SC2086
  system_install $missing || install_without_root

  if ! command -v cmake >/dev/null || ! command -v nasm >/dev/null; then
    cat >&2 <<'HELP'
error: building needs cmake and nasm, and they could not be installed here.
Install them, then run this command again:
  Debian, Ubuntu:  sudo apt-get install cmake nasm
  Fedora:          sudo dnf install cmake nasm
  macOS:           brew install cmake nasm
HELP
    return 1
  fi
}

# libheif 1.14 or newer, its headers and pkg-config (Debian bookworm has
# 1.15.1). A library, not a tool: without root it cannot be put in place
# for the linker and the loader, so the command to run is printed instead.
ensure_libheif() {
  if command -v pkg-config >/dev/null && pkg-config --exists 'libheif >= 1.14'; then
    return 0
  fi
  echo "==> installing libheif (HEIC and AVIF decoding) and pkg-config" >&2
  if command -v apt-get >/dev/null; then
    system_install libheif-dev pkg-config
  else
    system_install libheif-devel pkgconf-pkg-config
  fi
  if ! command -v pkg-config >/dev/null || ! pkg-config --exists 'libheif >= 1.14'; then
    cat >&2 <<'HELP'
error: building needs libheif (1.14 or newer, with its headers) and pkg-config,
and they could not be installed here. Install them, then run this command again:
  Debian, Ubuntu:  sudo apt-get install libheif-dev pkg-config
  Fedora:          sudo dnf install libheif-devel pkgconf-pkg-config
  macOS:           brew install libheif pkg-config
HELP
    return 1
  fi
}

# libaom's static library and headers, which libavif (AVIF encoding) is
# linked with: .cargo/config.toml points the build at Debian's libaom-dev
# (the LIB_AOM_* variables, which the environment may override).
ensure_libaom() {
  local lib="${LIB_AOM_STATIC_LIB_PATH:-/usr/lib/x86_64-linux-gnu}/libaom.a"
  [ -f "$lib" ] && return 0
  echo "==> installing libaom-dev (AVIF encoding)" >&2
  command -v apt-get >/dev/null && system_install libaom-dev
  if [ ! -f "$lib" ]; then
    cat >&2 <<HELP
error: building needs libaom's static library at $lib, and it could not be
installed here. Install it (Debian, Ubuntu: sudo apt-get install libaom-dev),
or set LIB_AOM_STATIC_LIB_PATH, LIB_AOM_INCLUDE_PATH and
LIB_AOM_PKG_CONFIG_PATH to where libaom.a, aom/aom.h and aom.pc are, then
run this command again.
HELP
    return 1
  fi
}

# Installs Debian/Fedora packages (the names given must be the system's)
# with the system's package manager, as root or with password-less sudo.
# Fails, installing nothing, when this user may not.
system_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null && sudo -n true 2>/dev/null || return 1
    sudo="sudo"
  fi
  if command -v apt-get >/dev/null; then
    $sudo apt-get update -q >&2 &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@" >&2
  elif command -v dnf >/dev/null; then
    $sudo dnf install -y "$@" >&2
  else
    return 1
  fi
}

# No root: user-space copies under $NWS_TOOLS.
install_without_root() {
  if ! command -v cmake >/dev/null && command -v python3 >/dev/null; then
    python3 -m venv "$NWS_TOOLS/cmake-venv" >&2 &&
      "$NWS_TOOLS/cmake-venv/bin/python" -m pip install --quiet --disable-pip-version-check "$CMAKE_FROM_PYPI" >&2 &&
      ln -sf "$NWS_TOOLS/cmake-venv/bin/cmake" "$NWS_TOOLS/bin/cmake"
  fi
  if ! command -v nasm >/dev/null && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
    local download
    download="$(mktemp -d)"
    if (cd "$download" && apt-get download nasm >&2); then
      dpkg-deb -x "$download"/nasm_*.deb "$NWS_TOOLS/nasm" &&
        ln -sf "$NWS_TOOLS/nasm/usr/bin/nasm" "$NWS_TOOLS/bin/nasm"
    fi
    rm -rf "$download"
  fi
}
