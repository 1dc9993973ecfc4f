//! The integration tests: one test binary (`cargo test --test it`), one module per concern, so
//! the AWS SDK and the crate are linked once rather than once per file. They share `support`,
//! which starts moto, the test servers and the relay binary.
//!
//! Run one module with a filter: `cargo test --test it lifecycle:: -- --test-threads=1`.

mod support;

mod bad_input;
mod chaos;
mod check;
mod dlq;
mod filters;
mod leases;
mod lifecycle;
mod operability;
mod properties;
mod publisher;
mod relay;
mod replicas;
mod security;
mod snapshot;
mod tables;
