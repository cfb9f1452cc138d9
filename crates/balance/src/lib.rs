//! Choosing an endpoint, as small pure code: health and ejection with backoff, peak-EWMA
//! latency, power of two choices, and the scale-up gate. No I/O, no clock of its own (every
//! function that depends on time takes the caller's `now`), no async runtime, no randomness of
//! its own; so every rule is tested on a fake clock with scripted random numbers.
//!
//! Users: the fib client picks among its remote back ends (`crates/fib/src/client.rs`); the
//! service manager's proxy picks among a service's instances and decides when to ask for one
//! more (`shared/specs/manager.md`, "Choosing an instance").
//!
//! # How a caller uses it
//!
//! Keep an [`Endpoint`] per endpoint (behind whatever lock suits). Per request: snapshot the
//! endpoints as [`Candidate`]s, [`pick`] one, [`Endpoint::start`] it, then report
//! [`Endpoint::succeeded`] (with the latency to the response head) or [`Endpoint::failed`], and
//! always [`Endpoint::end`]. A caller that probes with real requests asks
//! [`Endpoint::claim_probe`] first; one that runs health checks asks [`Health::probe_due`] and
//! reports [`Endpoint::probe_succeeded`] (with the probe's answer time) or
//! [`Endpoint::probe_failed`]. The manager also keeps a [`ScaleUp`] per service and asks it
//! [`ScaleUp::consider`] with [`best_estimate`].
//!
//! # The rules and their constants
//!
//! | rule | constant | why |
//! |---|---|---|
//! | latency is a peak-EWMA: a sample above the estimate replaces it; below, it pulls the estimate down with weight `1 - e^(-elapsed/decay)` | [`DEFAULT_DECAY`] 10 s | bad news acts at once (a queue shows first as slow answers); good news is trusted over time, not over request count; Linkerd's default |
//! | an endpoint with no sample has a neutral estimate; the first sample replaces it | the caller's (manager: `soft_latency`) | a new endpoint is tried, without being flooded |
//! | with nothing in flight, the estimate read for the pick fades towards zero with the same time constant | [`DEFAULT_DECAY`] | one slow answer must not exile an endpoint for good: fading gets it measured again |
//! | cost = estimate × (in flight + 1); P2C: two distinct random candidates in rotation, the cheaper wins; ties to the preferred one | | near-best spreading without every picker stampeding the one cheapest endpoint |
//! | ejected endpoints are never picked while one in rotation exists; if all are ejected, the one due back soonest | | a 503 helps nobody |
//! | `failures_to_eject` failures in a row eject | [`FAILURES_TO_EJECT`] 3 (fib: 1) | one reset is noise, three in a row a pattern; fib's back ends are few and a retry elsewhere is cheap |
//! | an estimate over `hard_latency` ejects | the caller's (manager: `hard_latency`) | far too slow is as bad as failing |
//! | ejection lasts a backoff doubling per ejection in a row, capped | [`FIRST_BACKOFF`] 10 s, [`MAX_BACKOFF`] 5 min (fib: 250 ms, 4 s) | a struggling endpoint gets time to recover; a dead one costs one probe per ceiling |
//! | after the backoff one probe decides: success restores (with a fresh estimate), failure doubles the backoff; failures of calls already in flight at the ejection change nothing | | one incident is one ejection |
//! | soft limit: best estimate in rotation over `soft_latency` (or no instance at all) asks for one more; one allocation in flight per service, never past `max`, none for `cooldown` after one completes | [`ALLOC_COOLDOWN`] 5 s | no stampede; a new instance needs a few requests before its estimate means anything |
//!
//! Module map: [`ewma`] (the average), [`health`] (ejection and backoff), [`endpoint`] (the two
//! joined, with requests in flight and the hard limit), [`p2c`] (the pick), [`scale`] (the
//! soft limit and the gate).
#![forbid(unsafe_code)]

pub mod endpoint;
pub mod ewma;
pub mod health;
pub mod p2c;
pub mod scale;

pub use endpoint::{Endpoint, EndpointPolicy};
pub use ewma::{PeakEwma, DEFAULT_DECAY};
pub use health::{Health, HealthPolicy, Transition, FAILURES_TO_EJECT, FIRST_BACKOFF, MAX_BACKOFF};
pub use p2c::{pick, Candidate, RandomSource};
pub use scale::{best_estimate, Decision, Hold, ScalePolicy, ScaleUp, ALLOC_COOLDOWN};
