//! One module per top-level command.

pub mod audit;
pub mod build;
pub mod cache;
pub mod compliance;
pub mod component;
pub mod image;
pub mod key;
pub mod launch;
pub mod lifecycle;
pub mod scan;
pub mod serve;
pub mod target;
pub mod test;
pub mod threats;
