//! Shared test infrastructure: a real time-series database (VictoriaMetrics), OTLP receivers
//! (gRPC and HTTP), a runner for the example binaries, and the in-process stallscope instance
//! with its captured reports.
#![allow(dead_code)]

pub mod capture;
pub mod child;
pub mod console;
pub mod examples;
pub mod idle;
pub mod late_clock;
pub mod log;
pub mod otlp;
pub mod service;
pub mod tick;
pub mod victoria;

/// Spins a CPU-bound loop for `d` of wall time: a poll (or a stretch between polls) that holds
/// its thread without blocking.
pub fn spin(d: std::time::Duration) {
    let start = std::time::Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
}
