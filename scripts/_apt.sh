# Sourced by scripts/_bwrap.sh and scripts/_browser.sh: install a Debian/Ubuntu package
# with apt-get, as root or through `sudo -n`, updating the package lists only when the
# first try finds no package (a fresh container's lists may be stale or missing).
#   apt_install PACKAGE WHAT [apt-get install options...]
# WHAT says what the package is for, in the messages. Returns 1 (after saying how to
# install it by hand) when it cannot.
apt_install() {
  local package=$1 what=$2 run=()
  shift 2
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      run=(sudo -n)
    else
      echo "$what needs $package, which is not installed; install it" \
           "(Debian/Ubuntu: sudo apt-get install $package) and run this again" >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$what needs $package, which is not installed; install the package $package" \
         "with your system's package manager" >&2
    return 1
  fi
  echo "installing $package ($what) with apt-get..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! "${run[@]}" apt-get install -y -q "$@" "$package" >/dev/null 2>&1; then
    if ! { "${run[@]}" apt-get update -q >/dev/null 2>&1 &&
           "${run[@]}" apt-get install -y -q "$@" "$package" >/dev/null; }; then
      echo "could not install $package with apt-get; install it by hand" >&2
      return 1
    fi
  fi
}
