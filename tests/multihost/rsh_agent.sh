#!/bin/bash
# Open MPI's launch agent (--mca plm_rsh_agent) for the network-namespace "hosts" of
# netns_test.sh: where ssh would log in to HOST, this runs the orted command line inside the
# namespace that owns HOST's address. Called as: rsh_agent.sh [ssh-style options] HOST COMMAND...
set -u
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
host="$1"
shift
ns=$(for n in $(ip netns list | awk '{print $1}'); do
       if ip netns exec "$n" ip -o -4 addr show | grep -q " inet ${host}/"; then echo "$n"; fi
     done)
if [[ -z "$ns" ]]; then
  echo "rsh_agent.sh: no network namespace owns ${host}" >&2
  exit 1
fi
# Like ssh, the command arrives as words for a remote shell. A host name of its own (a UTS
# namespace): Open MPI names its shared-memory segments after the host, and two "hosts" called
# alike would map each other's.
exec ip netns exec "$ns" unshare --uts /bin/sh -c "hostname $ns && $*"
