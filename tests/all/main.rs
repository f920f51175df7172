//! End-to-end tests: the real `toka-host` binary on real components built from source (one binary, one module per
//! area, so that linking happens once).

mod anchoring;
mod attacks;
mod attacks_net;
mod cache;
mod cli;
mod client;
mod cluster;
mod command;
mod dashboard;
mod descriptors;
mod dirstat;
mod events;
mod held_tokens;
mod hello;
mod hostile;
mod link;
mod llm;
mod market;
mod newcomer;
mod output_caps;
mod p3;
mod plans;
mod preview1;
mod progress;
mod readme;
mod reuse;
mod scaffold;
mod schema;
mod service;
mod soak;
mod spawn;
mod state;
mod tokens;
mod tools;
mod traces;
