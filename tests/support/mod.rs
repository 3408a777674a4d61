//! Shared test infrastructure: a real time-series database (VictoriaMetrics), a runner for
//! the example binaries, and the in-process stallscope instance with its captured reports.
#![allow(dead_code)]

pub mod capture;
pub mod examples;
pub mod victoria;
