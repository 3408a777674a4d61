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
