//! Names of the fib service's metrics (recorded with the `metrics` macros; the gateway installs
//! the Prometheus recorder) and the N buckets requests are counted by.

/// Requests answered, labelled `bucket` (see [`n_bucket`]) and `outcome` (`ok`, `bad_request`,
/// `error`).
pub const REQUESTS: &str = "portico_fib_requests_total";
/// Requests answered entirely from the cache.
pub const CACHE_HITS: &str = "portico_fib_cache_hits_total";
/// Requests that needed numbers past the cache's budget (computed while streamed).
pub const CACHE_MISSES: &str = "portico_fib_cache_misses_total";
/// Numbers held by the cache.
pub const CACHE_NUMBERS: &str = "portico_fib_cache_numbers";
/// Bytes of text held by the cache.
pub const CACHE_BYTES: &str = "portico_fib_cache_bytes";
/// Answers served from the REST tier's cache of back-end replies.
pub const CLIENT_CACHE_HITS: &str = "portico_fib_client_cache_hits_total";
/// Failed back-end calls, labelled `backend` and `kind` (`connect`, `io`, `timeout`, `protocol`).
pub const BACKEND_ERRORS: &str = "portico_fib_backend_errors_total";
/// Calls retried on another connection or back end after a failure.
pub const BACKEND_RETRIES: &str = "portico_fib_backend_retries_total";
/// Calls answered by a back end, labelled `backend`.
pub const BACKEND_CALLS: &str = "portico_fib_backend_calls_total";
/// Connections served by `fib-backend`, and requests it answered.
pub const SERVER_CONNECTIONS: &str = "portico_fib_backend_server_connections_total";
/// Requests refused by `fib-backend` as malformed.
pub const SERVER_BAD_REQUESTS: &str = "portico_fib_backend_server_bad_requests_total";

/// The bucket of requests whose N was refused.
pub const INVALID_BUCKET: &str = "invalid";

/// The decade N falls in, as a label: `1-10`, `11-100`, ..., `100001+`.
pub fn n_bucket(n: u64) -> &'static str {
    match n {
        0..=10 => "1-10",
        11..=100 => "11-100",
        101..=1_000 => "101-1000",
        1_001..=10_000 => "1001-10000",
        10_001..=100_000 => "10001-100000",
        _ => "100001+",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_at_powers_of_ten() {
        assert_eq!(n_bucket(1), "1-10");
        assert_eq!(n_bucket(10), "1-10");
        assert_eq!(n_bucket(11), "11-100");
        assert_eq!(n_bucket(1000), "101-1000");
        assert_eq!(n_bucket(100_000), "10001-100000");
        assert_eq!(n_bucket(100_001), "100001+");
    }
}
