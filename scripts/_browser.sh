# Sourced by scripts/test: make sure Debian's Chromium is here for the browser tests.
# Installs the Debian/Ubuntu package `chromium` (scripts/_apt.sh).
. "$(dirname "${BASH_SOURCE[0]}")/_apt.sh"
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
  # not fatal: the browser tests then say what is missing
  apt_install chromium "the browser tests" --no-install-recommends ||
    echo "warning: no chromium; the browser tests will say so" >&2
}
