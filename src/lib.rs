//! The misim binary's library: configuration, the composition of the three services in one
//! process (`misim up`), and `connection.json`.

pub mod cli;
pub mod connection;
pub mod deploy;
pub mod seed;
pub mod services;
pub mod sim_cli;
pub mod simulator;
pub mod split;
pub mod vm_env;

pub use simulator::{Simulator, SimulatorConfig};

/// Async worker threads of misim's runtime: half the cores, at least one.
///
/// RSA signatures, the bulk of misim's CPU, run on their own threads (one per core,
/// `misim_core::crypto::signing`); the async workers only move requests. Fewer of them wake
/// each other less: on 2 cores one worker instead of two took the certificate-token path from
/// 0.80 to 0.82–0.83 of the signature rate, cut IMDS's CPU per cached token by an eighth, and cost no
/// throughput (docs/performance.md).
pub fn async_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
