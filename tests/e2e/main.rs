//! End-to-end tests: the whole simulator started in-process on port 0 with a temp data dir,
//! driven over real HTTPS. One test binary; scenarios are modules.

mod aad_bad_input;
mod aad_graph;
mod aad_tokens;
mod arm;
mod arm_vms;
mod federation;
mod imds;
mod lifecycle;
mod random_input;
mod sim;
mod split;
mod support;
