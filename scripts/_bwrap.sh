# Sourced by scripts/*: make sure bubblewrap (`bwrap`), the sandbox of every agent, is here.
# Installs the Debian/Ubuntu package `bubblewrap` with apt-get (as root, or through
# `sudo -n`), updating the package lists only when the first try finds no package.
ensure_bwrap() {
  if [ "$(uname -s)" != Linux ]; then
    echo "note: devflow sandboxes agents with bubblewrap, on Linux only; here agents are refused" \
         "unless DEVFLOW_ALLOW_UNSANDBOXED=1 (docs/security.md)" >&2
    return 0
  fi
  if ! command -v bwrap >/dev/null 2>&1; then
    local run=()
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        run=(sudo -n)
      else
        echo "bubblewrap (bwrap) sandboxes devflow's agents and is not installed; install it" \
             "(Debian/Ubuntu: sudo apt-get install bubblewrap) and run this again" >&2
        return 1
      fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "bubblewrap (bwrap) sandboxes devflow's agents and is not installed; install the" \
           "package bubblewrap with your system's package manager" >&2
      return 1
    fi
    echo "installing bubblewrap (the agents' sandbox) with apt-get..." >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! "${run[@]}" apt-get install -y -q bubblewrap >/dev/null 2>&1; then
      # the package lists may be stale or missing (a fresh container): update, then again
      if ! { "${run[@]}" apt-get update -q >/dev/null 2>&1 &&
             "${run[@]}" apt-get install -y -q bubblewrap >/dev/null; }; then
        echo "could not install bubblewrap with apt-get; install it by hand" >&2
        return 1
      fi
    fi
  fi
  # Installed is not enough: the kernel must let it make namespaces (some distributions
  # restrict unprivileged user namespaces).
  if ! bwrap --ro-bind / / --unshare-pid --die-with-parent --proc /proc true 2>/dev/null; then
    echo "warning: bwrap is installed but cannot make a sandbox here:" \
         "$(bwrap --ro-bind / / --unshare-pid --proc /proc true 2>&1 | tail -n 1);" \
         "agents will be refused (devflow backends list says why; docs/security.md)" >&2
  fi
}
