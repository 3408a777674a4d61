//! Shared test infrastructure: real receivers (VictoriaMetrics, an OTLP gRPC server, the
//! console's own gRPC client) and a runner for the example binaries.
#![allow(dead_code)]

pub mod console;
pub mod examples;
pub mod otlp_grpc;
pub mod victoria;
