//! Gantry engine.
