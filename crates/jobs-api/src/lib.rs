//! The job queue's HTTP side (spec `shared/specs/jobs.md`, sections 1 and 2): the original
//! ServiceGateway API byte for byte (annotate / process / status / cancel, CANARIE pages,
//! vesta error bodies, JWT), the modern job API beside it, and what `portico token`,
//! `portico migrate servicegateway` and `portico worker --gateway` need.
//!
//! The pure pieces live in their own modules so each can be tested alone:
//! [`pyjson`] writes JSON as Flask did, [`xml`] status documents as `dicttoxml` did,
//! [`negotiate`] picks JSON, HTML or XML from `Accept`, [`vesta`] is the one place that maps
//! failures to statuses and vesta codes, [`jwt`] checks and makes tokens, [`submission`]
//! builds the task message, [`multipart`] reads `multipart/form-data` bodies, [`temporary`]
//! keeps uploaded temporary files, [`canarie`] the registry pages, [`migrate`] reads the
//! original's Python config.

#![forbid(unsafe_code)]

pub mod api;
pub mod canarie;
pub mod html;
pub mod jwt;
mod legacy;
pub mod migrate;
mod modern;
pub mod multipart;
pub mod negotiate;
pub mod pull;
pub mod pyjson;
pub mod status;
pub mod submission;
pub mod temporary;
mod uploads;
pub mod vesta;
pub mod worker;
pub mod workflow;
pub mod xml;

#[cfg(test)]
mod testutil;

pub use negotiate::Format;
pub use vesta::ApiError;
