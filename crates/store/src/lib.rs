//! The `Store` seam: a durable map from digest to message, with an embedded (redb)
//! implementation and a Redis implementation. Knows nothing of HTTP.
