#!/usr/bin/env bash
# Run a command as if on a machine of its own, for tests of multi-node behaviour on one host:
#
#   cluster/isolate_node.sh [--share PATH]... -- COMMAND [ARGS...]
#
# The command runs in a new mount namespace with a fresh, empty tmpfs on /dev/shm and on /tmp, so it sees
# none of this host's node-local scratch, as a second machine would not. Everything else (home, the
# checkout, /var/tmp, ...) stays visible, like a cluster's shared filesystem. A --share PATH that lies
# under /tmp or /dev/shm (a checkout or venv cloned there) is carried into the new namespace at the same
# path. Needs root (unshare -m). Processes the command starts stay in the namespace (a slurmd's job steps,
# a `ray start`'s workers).
set -euo pipefail

if [[ -z ${_RLAIF_ISOLATED:-} ]]; then
    [[ $(id -u) -eq 0 ]] || { echo "isolate_node.sh: needs root (mount namespaces)" >&2; exit 1; }
    exec unshare --mount --propagation private env _RLAIF_ISOLATED=1 "$0" "$@"
fi
unset _RLAIF_ISOLATED

shares=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --share) shares+=("$(realpath -m "$2")"); shift 2;;
        --) shift; break;;
        *) echo "usage: isolate_node.sh [--share PATH]... -- COMMAND [ARGS...]" >&2; exit 2;;
    esac
done
[[ $# -gt 0 ]] || { echo "isolate_node.sh: no command" >&2; exit 2; }

stash=$(mktemp -d /var/tmp/isolate-XXXXXX)  # outside what is about to be hidden
kept=()
for i in "${!shares[@]}"; do
    path=${shares[$i]}
    case $path in
        /tmp|/tmp/*|/dev/shm|/dev/shm/*)
            mkdir -p "$stash/$i"
            mount --bind "$path" "$stash/$i"
            kept+=("$i");;
    esac
done
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
for i in "${kept[@]}"; do
    mkdir -p "${shares[$i]}"
    mount --bind "$stash/$i" "${shares[$i]}"
    umount "$stash/$i"
done
for i in "${kept[@]}"; do rmdir "$stash/$i"; done
rmdir "$stash"
exec "$@"
