#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build recordgate:
# cmake (zlib-ng, built by Pingora), pkg-config and libssl-dev (TLS), and the
# openssl command (the demo's self-signed certificate), protoc (etcd-client)
# and etcd itself (the fleet tests).
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# etcd-client's build compiles etcd's protocol: protoc and the well-known
# type headers.
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
dpkg -s libprotobuf-dev >/dev/null 2>&1 || need+=(libprotobuf-dev)
# The fleet tests start a real etcd (Debian's 3.4) on loopback.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}"
fi
