//! assim-reliable
