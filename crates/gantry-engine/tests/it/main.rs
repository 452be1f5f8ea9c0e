//! The engine's rules, each tested with gantry-core's fake backend and fake forge on a real
//! SQLite store.

mod cancel_retry;
mod dag;
mod limits;
mod recovery;
mod reporter;
mod supersede;
mod support;
mod timeouts;
