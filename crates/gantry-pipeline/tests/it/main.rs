//! Integration tests of the pipeline language: one binary, one module per concern.

mod broken;
