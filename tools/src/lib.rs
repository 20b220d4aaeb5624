//! The `mqttsn` command-line tools. Each subcommand is a module here, so
//! the tests and later tools share the code; `main.rs` only parses the
//! command line.

pub mod bench;
pub mod dump;
pub mod format;
pub mod pubsub;
pub mod relay;
