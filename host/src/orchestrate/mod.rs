//! Orchestration: many agents from one manifest (`toka.toml`), run on one [`crate::runtime::Host`] in dependency
//! order and by priority, each with the operator's token attenuated to exactly its own grants and limits.
//!
//! The path of a plan mirrors the path of a run: [`manifest`] (what the operator writes, parsed strictly and
//! resolved into a [`manifest::Plan`]) -> [`executor`] (every agent prepared and authorized before anything starts,
//! then the steps scheduled, each run through the host, every step an operation in the kernel's log so that a
//! stopped plan resumes where it was). This module never opens the database, the keys or the cache its own way:
//! it goes through the host, and its records through the host's event log.

pub mod executor;
pub mod manifest;

pub use executor::{Observer, Options, PlanSource, PlanSummary, StepSummary, UpError, Update};
pub use manifest::{ManifestError, Plan, Priority, Step};
