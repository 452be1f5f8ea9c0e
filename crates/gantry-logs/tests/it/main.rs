//! gantry-logs integration tests: the store on real files, the hub with concurrent viewers,
//! masking end to end, retention, archive (S3 against moto's server), and a crash of a writing
//! process.

mod archive;
mod crash;
mod follow;
mod masking;
mod moto;
mod store;
mod support;
