//! System tests of Gantry live in `it/` (one test binary); this library is empty on purpose.
