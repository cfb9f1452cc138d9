//! Gateway core: listeners, TLS, middleware, router, admin service, logs.
