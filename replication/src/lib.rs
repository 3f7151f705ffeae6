//! placeholder
pub mod data;
