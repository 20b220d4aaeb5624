//! Endpoint tests with virtual time.
