//! toka-host: runs AI agents and their tools as WebAssembly components, each in a deny-by-default sandbox whose
//! every right is an explicit grant, with fuel, time, memory and output limits.
//!
//! The modules follow the path a run takes:
//! [`component`] (load, validate, compile through the on-disk cache, classify the world) ->
//! [`grants`] (what the run asks for, checked before the guest starts) ->
//! [`sandbox`] (the `Store`: WASI context built from grants only, limits, captured output) ->
//! [`run`] (instantiate from a cached `InstancePre`, call the export, classify the outcome) ->
//! [`report`] (what the run did, for people and for `--json`).
#![forbid(unsafe_code)]

pub mod adapt;
pub mod agent_state;
pub mod bindings;
pub mod bounds;
pub mod cache_auth;
pub mod client;
pub mod cluster;
pub mod commands;
pub mod component;
pub mod db;
pub mod engine;
pub mod error;
pub mod events;
pub mod filecache;
pub mod grants;
pub mod home;
pub mod http;
pub mod journal;
pub mod kernel;
pub mod llm;
pub mod orchestrate;
pub mod plugin;
pub mod progress;
pub mod project;
pub mod report;
pub mod run;
pub mod runtime;
pub mod sandbox;
pub mod service;
pub mod spawn;
pub mod tasks;
pub mod telemetry;
pub mod token;
pub mod tools;
pub mod units;

#[cfg(test)]
mod layers;
