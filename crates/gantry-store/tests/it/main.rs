//! The store's test suite. Every test in `store` runs twice: against SQLite (a temporary file)
//! and against PostgreSQL (a fresh database on the server named by `GANTRY_TEST_DATABASE_URL`;
//! `./dev test` starts one).

mod store;
mod support;
