//! Test harness: starts the real `portico` binary on ephemeral ports, waits until it is ready
//! and gives tests an HTTPS client that trusts only the generated certificate.
