# Sourced by scripts/test: make sure Debian's Chromium is here for the browser tests.
# Installs the Debian/Ubuntu package `chromium` with apt-get (as root, or through
# `sudo -n`), updating the package lists only when the first try finds no package.
# Playwright (a dev dependency in pyproject.toml) drives this browser: it never
# downloads one of its own (tests/browser/support.py launches /usr/bin/chromium).
# Failing here is a warning, not an error: the browser tests then say what is missing
# (they skip locally, and fail under CI=true).
browser_path() {
  local name
  for name in ${DEVFLOW_CHROMIUM:-} chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

ensure_browser() {
  if browser_path >/dev/null; then
    return 0
  fi
  local run=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      run=(sudo -n)
    else
      echo "warning: the browser tests need Chromium, which is not installed; install it" \
           "(Debian/Ubuntu: sudo apt-get install chromium) and run this again" >&2
      return 0
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "warning: the browser tests need Chromium, which is not installed; install it" \
         "with your system's package manager (or set DEVFLOW_CHROMIUM to its path)" >&2
    return 0
  fi
  echo "installing chromium (the browser tests' browser) with apt-get..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! "${run[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; then
    # the package lists may be stale or missing (a fresh container): update, then again
    if ! { "${run[@]}" apt-get update -q >/dev/null 2>&1 &&
           "${run[@]}" apt-get install -y -q --no-install-recommends chromium >/dev/null; }; then
      echo "warning: could not install chromium with apt-get; the browser tests will say so" >&2
      return 0
    fi
  fi
}
