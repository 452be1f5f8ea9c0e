#!/usr/bin/env bash
# Seeds the fuzz corpus with the example pipelines and the broken-pipeline corpus.
# The corpus is not committed; run this before `cargo fuzz run parse_pipeline`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p fuzz/corpus/parse_pipeline
cp pipelines/*.yaml crates/gantry-pipeline/tests/broken/*.yaml fuzz/corpus/parse_pipeline/
echo "seeded $(ls fuzz/corpus/parse_pipeline | wc -l) files into fuzz/corpus/parse_pipeline"
