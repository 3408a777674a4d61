//! Shared test infrastructure: a real time-series database (VictoriaMetrics) and a runner for
//! the example binaries.
#![allow(dead_code)]

pub mod examples;
pub mod log;
pub mod victoria;
