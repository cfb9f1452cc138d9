//! Wiring of each built-in service into the gateway: one file per service, so the service's
//! owner changes only its own file.

pub mod fib;
pub mod messages;
pub mod region;
