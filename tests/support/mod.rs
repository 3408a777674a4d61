//! Shared test infrastructure: a real time-series database (VictoriaMetrics), OTLP receivers
//! (gRPC and HTTP) and a runner for the example binaries.
#![allow(dead_code)]

pub mod examples;
pub mod log;
pub mod otlp;
pub mod victoria;
