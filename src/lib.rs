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
