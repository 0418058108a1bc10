#!/usr/bin/env bash
# Builds every image docker-compose.yml names without pulling anything:
# the NATS image from the static nats-server in .venv, and each service
# image from its release binary plus the shared libraries ldd lists.
set -euo pipefail
cd "$(dirname "$0")/../.."
tag="${SWITCHYARD_TAG:-dev}"
nats_image="${NATS_IMAGE:-nats:2.15.1}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/nats"
cp "$(readlink -f .venv/bin/nats-server)" "$work/nats/nats-server"
docker build -q -t "$nats_image" -f deploy/docker/Dockerfile.nats-scratch "$work/nats" >/dev/null
echo "built $nats_image (FROM scratch, static nats-server)"

# `switchyard` itself too (image switchyard/cli): the CLI inside the stack's
# networks (the compose test probes reachability with it).
for service in math-service email-notifier payment-processor log-worker stock-ticker registry switchyard; do
  bin="target/release/$service"
  image="switchyard/$service:$tag"
  [ "$service" = switchyard ] && image="switchyard/cli:$tag"
  [ -x "$bin" ] || { echo "missing $bin: run cargo build --release --workspace --exclude switchyard-chaos" >&2; exit 1; }
  root="$work/$service/rootfs"
  mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$work/$service/data"
  touch "$work/$service/data/.keep"
  cp "$bin" "$root/usr/local/bin/service"
  # Exactly the shared libraries the binary needs, at the paths it looks for them.
  ldd "$bin" | awk '/=>/ { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
    [ -f "$lib" ] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  printf 'root:x:0:0:root:/:/sbin/nologin\nswitchyard:x:10001:10001:switchyard:/data:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nswitchyard:x:10001:\n' > "$root/etc/group"
  chmod 1777 "$root/tmp"
  cp deploy/docker/Dockerfile.scratch "$work/$service/Dockerfile"
  # /data belongs to the service user (COPY --chown), so named volumes start writable.
  docker build -q -t "$image" "$work/$service" >/dev/null
  echo "built $image ($(du -sh "$root" | cut -f1))"
done
