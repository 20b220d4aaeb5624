//! The aggregating gateway (spec 4.3).

pub mod filters;
