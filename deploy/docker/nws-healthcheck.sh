#!/bin/bash
# The image's HEALTHCHECK, for whichever of its binaries the container runs:
#   nws-healthcheck [gateway|optimizer-svc|storage-svc|nws-mesh]
# With no argument, the binary is read from PID 1's command line (past an
# init such as `docker run --init`).
#
# It asks the process's own HTTP /healthz, with bash's /dev/tcp: the runtime
# image has no curl or wget, and a probe binary would be one more thing to
# build and patch. The port comes from the NWS_* variables the binary reads
# itself, with the same defaults, so a container that moves a port needs no
# second setting. Liveness only (not /readyz): a dependency that is down
# must not make Docker, or compose's `service_healthy`, give up on a process
# that is serving and will pick the dependency up again.
#
# Exit 0: healthy; 1: not (one line on stderr says why, `docker inspect`
# shows it).
set -u

TIMEOUT=2

fail() {
  echo "nws-healthcheck: $*" >&2
  exit 1
}

# HOST PORT of a listen address such as 0.0.0.0:3000 or [::]:3000; an
# unspecified address is reached on loopback.
split_addr() {
  local addr=$1
  PORT=${addr##*:}
  HOST=${addr%:*}
  HOST=${HOST#\[}
  HOST=${HOST%\]}
  case $HOST in
    0.0.0.0 | "") HOST=127.0.0.1 ;;
    ::) HOST=::1 ;;
  esac
  [[ $PORT =~ ^[0-9]+$ ]] || fail "cannot read a port in '$addr'"
}

# GET /healthz on ADDR answers 200.
http_ok() {
  local status=""
  split_addr "$1"
  { exec 3<>"/dev/tcp/$HOST/$PORT"; } 2>/dev/null || fail "nothing listens on $1"
  printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nUser-Agent: nws-healthcheck\r\nConnection: close\r\n\r\n' >&3
  IFS= read -r -t "$TIMEOUT" status <&3
  # Read to the end (the server closes after the body) rather than close
  # first: a close with unread data resets the connection, which the server
  # would log as an error every probe.
  [[ -n $status ]] && while IFS= read -r -t "$TIMEOUT" _ <&3; do :; done
  exec 3<&-
  status=${status%$'\r'}
  [[ $status =~ ^HTTP/[0-9.]+\ 200( |$) ]] || fail "GET http://$1/healthz: ${status:-no answer in ${TIMEOUT}s}"
}

# Something accepts connections on ADDR (a TLS or gRPC port, which a plain
# HTTP request cannot ask).
accepts() {
  split_addr "$1"
  { exec 3<>"/dev/tcp/$HOST/$PORT"; } 2>/dev/null || fail "nothing listens on $1"
  exec 3<&-
}

binary_of_pid1() {
  local arg
  [[ -r /proc/1/cmdline ]] || return 0
  while IFS= read -r -d '' arg; do
    case ${arg##*/} in
      docker-init | tini | dumb-init | -- | -*) continue ;;
      *)
        printf '%s' "${arg##*/}"
        return 0
        ;;
    esac
  done </proc/1/cmdline
}

# NWS_ADMIN_ADDR as the binaries read it: unset means the binary's default,
# set and blank means no admin listener.
admin_addr() {
  local default=$1
  if [[ -z ${NWS_ADMIN_ADDR+set} ]]; then
    printf '%s' "$default"
  else
    printf '%s' "${NWS_ADMIN_ADDR//[[:space:]]/}"
  fi
}

# The gateway's port (gateway, nws-mesh): /healthz there unless it speaks
# TLS only, then the admin listener (always plain HTTP), else whether the
# port accepts at all.
check_gateway() {
  local http=${NWS_HTTP_ADDR:-127.0.0.1:3000} admin
  admin=$(admin_addr "$1")
  if [[ -z ${NWS_TLS_CERT:-} ]]; then
    http_ok "$http"
  elif [[ -n $admin ]]; then
    http_ok "$admin"
  else
    accepts "$http"
  fi
}

# A gRPC service: /healthz on its admin listener, else whether its gRPC
# port accepts.
check_grpc_service() {
  local admin
  admin=$(admin_addr "$1")
  if [[ -n $admin ]]; then
    http_ok "$admin"
  else
    accepts "$2"
  fi
}

binary=${1:-$(binary_of_pid1)}
case $binary in
  gateway) check_gateway "" ;;
  nws-mesh) check_gateway 127.0.0.1:9464 ;;
  optimizer-svc) check_grpc_service 127.0.0.1:9465 "${NWS_OPTIMIZER_ADDR:-127.0.0.1:50051}" ;;
  storage-svc) check_grpc_service 127.0.0.1:9466 "${NWS_STORAGE_ADDR:-127.0.0.1:50052}" ;;
  *) fail "unknown binary '${binary}': pass one of gateway, optimizer-svc, storage-svc, nws-mesh" ;;
esac
exit 0
