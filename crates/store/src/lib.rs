//! assim-store
