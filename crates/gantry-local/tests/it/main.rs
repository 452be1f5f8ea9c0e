//! The local backend against real git repositories and real processes.

mod checkout;
mod gitops;
mod leftovers;
mod output;
mod steps;
mod stopping;
mod support;
mod tools;
