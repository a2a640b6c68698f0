# Sourced by scripts/*: make sure bubblewrap (`bwrap`), the sandbox of every agent, is here.
# Installs the Debian/Ubuntu package `bubblewrap` (scripts/_apt.sh).
. "$(dirname "${BASH_SOURCE[0]}")/_apt.sh"
ensure_bwrap() {
  if [ "$(uname -s)" != Linux ]; then
    echo "note: devflow sandboxes agents with bubblewrap, on Linux only; here agents are refused" \
         "unless DEVFLOW_ALLOW_UNSANDBOXED=1 (docs/security.md)" >&2
    return 0
  fi
  if ! command -v bwrap >/dev/null 2>&1; then
    apt_install bubblewrap "the agents' sandbox" || return 1
  fi
  # Installed is not enough: the kernel must let it make namespaces (some distributions
  # restrict unprivileged user namespaces).
  if ! bwrap --ro-bind / / --unshare-pid --die-with-parent --proc /proc true 2>/dev/null; then
    echo "warning: bwrap is installed but cannot make a sandbox here:" \
         "$(bwrap --ro-bind / / --unshare-pid --proc /proc true 2>&1 | tail -n 1);" \
         "agents will be refused (devflow backends list says why; docs/security.md)" >&2
  fi
}
