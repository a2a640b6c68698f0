# Sourced by scripts/*: make sure .venv exists and holds this checkout with its dev extra.
# Quick when up to date: a stamp records the hash of pyproject.toml it was installed from.
ensure_venv() {
  local root python stamp want
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  python=${DEVFLOW_PYTHON:-python3}
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "devflow needs Python 3.11 or newer as \`$python\` (set DEVFLOW_PYTHON)" >&2
    return 1
  fi
  stamp="$root/.venv/.devflow-stamp"
  want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
  if [ -x "$root/.venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "preparing .venv (dependencies from pyproject.toml)..." >&2
  [ -x "$root/.venv/bin/python" ] || "$python" -m venv "$root/.venv"
  "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  "$root/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[dev]" >&2
  echo "$want" > "$stamp"
}
