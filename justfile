# Gantry's tasks. `./dev RECIPE` runs one (installing `just` first when needed).

set shell := ["bash", "-euo", "pipefail", "-c"]

gantry := "target/debug/gantry"

[private]
default:
    @just --list --unsorted

# Gantry doing its job here on embedded defaults: `gantry serve` (SQLite, local backend,
# 127.0.0.1:8080) receives a signed push webhook for examples/demo and runs its pipeline.
[doc("Gantry here on embedded defaults: gantry serve gets a signed push of examples/demo and runs it")]
demo *ARGS: build
    scripts/demo {{ARGS}}

# The same pipeline with `gantry run` (no server): live, coloured output per step.
[doc("The demo's pipeline with gantry run (no server), live output per step")]
demo-run: build
    #!/usr/bin/env bash
    set -euo pipefail
    dir=$(mktemp -d -t gantry-demo.XXXXXX)
    trap 'rm -rf "$dir"' EXIT
    cp -R examples/demo/. "$dir"
    git -C "$dir" init -q -b main
    git -C "$dir" add -A
    git -C "$dir" -c user.name=Gantry -c user.email=demo@localhost -c commit.gpgsign=false commit -qm "Demo app"
    cd "$dir" && "{{justfile_directory()}}/{{gantry}}" run

# The whole test suite, as CI runs it: formatting, lints, generated files, every test (with a
# PostgreSQL server and a Kubernetes test cluster), fuzzing.
[doc("The whole test suite exactly as CI runs it (installs and starts what it needs)")]
test: deps fmt-check clippy check-generated check-chart cluster-build cluster-stage-tests test-all fuzz-ci

# Install what the tests need (Debian packages, cargo tools).
deps:
    scripts/install-deps

# Build the gantry binary.
build:
    cargo build -p gantry

[doc("Fail when code is not formatted (cargo fmt)")]
fmt-check:
    cargo fmt --all -- --check

[doc("Clippy on every target, warnings as errors")]
clippy:
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Every test of every crate (unit, integration, system), with a throwaway PostgreSQL server and
# a throwaway Kubernetes test cluster (tests/cluster; see docs/testing.md).
[doc("Every test of every crate, with a throwaway PostgreSQL server and Kubernetes test cluster")]
test-all:
    #!/usr/bin/env bash
    set -euo pipefail
    pg=$(mktemp -d -t gantry-pg.XXXXXX)
    export GANTRY_TEST_DATABASE_URL=$(scripts/pg-test-server start "$pg")
    trap 'scripts/pg-test-server stop "$pg"' EXIT
    tests/cluster/with-cluster bash -c 'tests/cluster/smoke "$GANTRY_TEST_CLUSTER_DIR" && cargo test --workspace --locked --no-fail-fast'

# The Helm chart: helm lint --strict, kubernetes-validate --strict (1.36) on each value set,
# checkov and trivy config, with every accepted finding documented in the chart.
[doc("Check the Helm chart: helm lint, kubernetes-validate, checkov, trivy config")]
check-chart:
    scripts/check-chart

# Build (or reuse from the cache) the Kubernetes control plane, kubelet, etcd and kwok, the
# real node's containerd, and the delivery chain's tools (Kaniko, Trivy, yq, Flux), for the tests.
[doc("Build (or reuse) the test cluster's Kubernetes, real node and delivery-chain tools")]
cluster-build:
    tests/cluster/build
    tests/cluster/node/build
    tests/cluster/tools/build

# The kwok Stages that play our pods, tested on their own.
cluster-stage-tests: cluster-build
    cd tests/cluster/kwok && GOMAXPROCS=2 nice -n 10 go test -p 2 ./...

# Start a test cluster in DIR (prints the environment to use it).
cluster-up DIR="target/test-cluster": cluster-build
    tests/cluster/up {{DIR}}

# Stop the test cluster started in DIR.
cluster-down DIR="target/test-cluster":
    tests/cluster/down {{DIR}}

# Regenerate committed generated files (the pipeline JSON Schema).
schema: build
    {{gantry}} schema > docs/pipeline.schema.json

# Fail when a committed generated file is stale.
check-generated: build
    {{gantry}} schema | diff -u docs/pipeline.schema.json - || { echo "docs/pipeline.schema.json is stale: run ./dev schema" >&2; exit 1; }

# Fuzz the pipeline parser for SECONDS (needs cargo-fuzz; installed by `deps`).
fuzz SECONDS="60":
    scripts/fuzz {{SECONDS}}

# CI's fuzzing: one minute.
fuzz-ci:
    scripts/fuzz 60

# Benchmarks; results go to docs/benchmarks.md as ratios against references measured in the same run.
bench:
    scripts/bench

# Lint the example pipelines with the gantry binary.
lint-examples: build
    {{gantry}} lint pipelines
